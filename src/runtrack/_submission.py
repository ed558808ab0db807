"""What `submit`, `start_call` and `start_task` check before a run is built.

Plain functions of the arguments, kept out of the manager: what a callable is called, which
callables run on the loop and which in a thread, options that collide with a function's
own parameters, and limits.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import socket
from collections.abc import Callable
from typing import Any

from runtrack._models import new_run_id
from runtrack.registry.base import is_int

__all__ = [
    "check_awaitable",
    "check_collisions",
    "check_limit",
    "colliding_options",
    "default_owner",
    "is_async_callable",
    "name_of",
]


def default_owner() -> str:
    """This manager's default name in the registry: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{new_run_id()[:8]}"


def name_of(target: object) -> str:
    """The qualified name of a function (through partials), or of the object's type."""
    func = target.func if isinstance(target, functools.partial) else target
    name = getattr(func, "__qualname__", None)
    return name if isinstance(name, str) else type(target).__qualname__


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` gives a coroutine (through partials and ``async __call__``)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def check_awaitable(coro: object, caller: str) -> None:
    """A coroutine (or awaitable) that has not started, or a `TypeError`."""
    if isinstance(coro, asyncio.Future):
        raise TypeError(
            f"{caller}() needs a coroutine that has not started, got an already scheduled "
            f"{type(coro).__name__}: pass the coroutine itself (work(), not create_task(work()))"
        )
    if not inspect.isawaitable(coro):
        raise TypeError(
            f"{caller}() needs an awaitable (a coroutine such as work()), got "
            f"{type(coro).__name__}: call the async function, or use submit(fn, ...)"
        )


#: What each run option of `submit` / `start_call` is when not given.
_OPTION_DEFAULTS: dict[str, object] = {
    "name": None, "run_id": None, "parameters": None, "tags": None, "group": None,
    "priority": 0, "timeout": None, "retry": None, "delay": None,
}  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _keyword_parameters(fn: Callable[..., Any]) -> frozenset[str]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return frozenset()
    return frozenset(
        name
        for name, param in signature.parameters.items()
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    )


def colliding_options(fn: Callable[..., Any], given: list[str]) -> list[str]:
    """Which of the ``given`` option names are also keyword parameters of ``fn``."""
    if not given:
        return []
    try:
        params = _keyword_parameters(fn)
    except TypeError:  # unhashable callable: read it without the cache
        params = _keyword_parameters.__wrapped__(fn)
    return [k for k in given if k in params]


def check_collisions(fn: Callable[..., Any], **options: object) -> None:
    """A run option given that is also a parameter of ``fn`` is ambiguous: a `TypeError`.

    A `functools.partial` has its arguments bound already: every keyword is a run option.
    """
    if isinstance(fn, functools.partial):
        return
    given = [k for k, v in options.items() if v is not _OPTION_DEFAULTS[k] and v != 0]
    clash = colliding_options(fn, given)
    if clash:
        option = clash[0]
        raise TypeError(
            f"{option}= is both a run option of submit()/start_call() and a parameter of "
            f"{name_of(fn)!r}, so it is ambiguous: to pass it to the function, bind it "
            f"first, submit(functools.partial(fn, {option}=...)); run options passed to "
            f"submit() are never given to the function"
        )


def check_limit(name: str, value: object) -> None:
    """A limit is None or an int >= 1, or a `ValueError` naming it."""
    if value is not None and (not is_int(value) or value < 1):  # type: ignore[operator]
        raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
