"""Registry calls that a cancellation lets finish (`uncut`), and waiting for them (`settle`)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine
from typing import Any, TypeVar

__all__ = ["settle", "uncut"]

_T = TypeVar("_T")
#: The calls under way, each with the task that awaited it.
_calls: dict[asyncio.Future[Any], asyncio.Task[Any] | None] = {}


async def uncut(call: Coroutine[Any, Any, _T]) -> _T:
    """Await a registry call that a cancellation (the manager shutting down) lets finish.

    A database call cut in the middle leaves its connection to the garbage collector. The
    call goes on after its caller is cancelled: a manager's shutdown waits for those its
    background tasks left (see `settle`) before the registry may be closed.
    """
    future = asyncio.ensure_future(call)
    _calls[future] = asyncio.current_task()
    future.add_done_callback(_settled)
    return await asyncio.shield(future)


async def settle(tasks: Collection[asyncio.Task[Any]], timeout: float) -> None:
    """Wait, for at most ``timeout`` seconds, for the calls under way that ``tasks`` began.

    ``tasks`` stopped awaiting them when they were cancelled: the calls may still be
    using the registry.
    """
    calls = {future for future, task in list(_calls.items()) if task in tasks}
    if calls:
        await asyncio.wait(calls, timeout=timeout)


def _settled(future: asyncio.Future[Any]) -> None:
    _calls.pop(future, None)
    if not future.cancelled():
        future.exception()  # seen: its caller may have stopped waiting
