"""Registry calls that a cancellation lets finish (`uncut`)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["uncut"]

_T = TypeVar("_T")
_calls: set[asyncio.Future[Any]] = set()


async def uncut(call: Coroutine[Any, Any, _T]) -> _T:
    """Await a registry call that a cancellation (the manager shutting down) lets finish.

    A database call cut in the middle leaves its connection to the garbage collector.
    """
    future = asyncio.ensure_future(call)
    _calls.add(future)
    future.add_done_callback(_settled)
    return await asyncio.shield(future)


def _settled(future: asyncio.Future[Any]) -> None:
    _calls.discard(future)
    if not future.cancelled():
        future.exception()  # seen: its caller may have stopped waiting
