"""Plain (sync) functions as runs: each call in a worker thread, under ``max_threads``.

The function runs through `anyio.to_thread.run_sync`, with the run's context variables
(so `current_run()` works in the thread) and a `anyio.CapacityLimiter` shared by the
manager's thread runs. A thread cannot be interrupted: a run cancelled or timed out is
recorded at once, and what the function returns later is discarded and logged.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread

from runtrack._logging import Logger

__all__ = ["ThreadRuns"]


class ThreadRuns:
    """Makes the coroutine factory of a sync function's run, for one manager."""

    def __init__(self, max_threads: int, log: Logger) -> None:
        self._max_threads = max_threads
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop
        self._log = log

    @property
    def max_threads(self) -> int:
        """Most sync runs executing at once (each holds a worker thread)."""
        return self._max_threads

    def _limit(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._max_threads)
        return self._limiter

    def factory(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], Awaitable[Any]]:
        """A callable that returns a new awaitable running ``fn(*args, **kwargs)`` in a thread."""
        call = functools.partial(fn, *args, **kwargs)
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        return functools.partial(self._run, call, name)

    async def _run(self, call: Callable[[], Any], name: str) -> Any:
        abandoned = threading.Event()

        def in_thread() -> Any:
            result = call()
            if abandoned.is_set():
                self._log.warning(
                    "thread_result_discarded",
                    function=name,
                    result_type=type(result).__name__,
                    detail="the run was cancelled or timed out while its thread ran on; "
                    "a thread cannot be interrupted, so what it returned is discarded",
                )
            return result

        try:
            return await anyio.to_thread.run_sync(
                in_thread, abandon_on_cancel=True, limiter=self._limit()
            )
        except BaseException:
            abandoned.set()
            raise
