"""`SyncTaskManager`: the manager for code with no event loop (Flask, Django, scripts).

It runs a `BackgroundTaskManager` on an event loop of its own, in a daemon thread, and
reaches it through an anyio `BlockingPortal`: every method blocks the calling thread until
the manager has answered, and any number of threads may call it at once.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

import anyio
from anyio.from_thread import BlockingPortal

from runtrack._exceptions import ManagerClosedError
from runtrack._manager import BackgroundTaskManager

if TYPE_CHECKING:
    from runtrack._models import Run
    from runtrack._stats import ManagerStats
    from runtrack.registry.base import RunRegistry

__all__ = ["SyncTaskManager"]


def _start_portal(name: str) -> tuple[BlockingPortal, threading.Thread]:
    """An event loop in a daemon thread, and the portal into it."""
    ready = threading.Event()
    box: list[BlockingPortal] = []

    async def serve() -> None:
        async with BlockingPortal() as portal:
            box.append(portal)
            ready.set()
            await portal.sleep_until_stopped()

    # A daemon thread: a script that never calls shutdown() can still exit (its runs are
    # then flushed by the atexit hook, see SyncTaskManager.__init__).
    thread = threading.Thread(target=anyio.run, args=(serve,), name=name, daemon=True)
    thread.start()
    ready.wait()
    return box[0], thread


def _shutdown_at_exit(ref: weakref.ref[SyncTaskManager]) -> None:
    manager = ref()
    if manager is not None:
        manager.shutdown()


class SyncTaskManager:
    """A `BackgroundTaskManager` for code with no event loop: every method blocks.

    The manager and its runs live on an event loop in a daemon thread; calls from any
    thread reach it through an anyio blocking portal. Runs may be async functions or
    plain ones (those run in worker threads). At interpreter exit a manager still open is
    shut down (with its ``shutdown_grace``), so a script's last runs are recorded.

    Args:
        registry: Where runs are recorded; None means a fresh `InMemoryRunRegistry`.
        **manager_options: Options of `BackgroundTaskManager` (``max_concurrency``, ...).

    Example:
        >>> from runtrack import SyncTaskManager
        >>> def add(x: int, y: int) -> int:
        ...     return x + y
        >>> with SyncTaskManager(max_concurrency=4) as manager:
        ...     run = manager.submit(add, 2, 3)
        ...     manager.wait(run.run_id).result
        5
    """

    def __init__(self, registry: RunRegistry | None = None, **manager_options: Any) -> None:
        self._closed = False
        self._lock = threading.Lock()
        self._portal, self._thread = _start_portal("runtrack-sync-manager")

        async def start() -> BackgroundTaskManager:
            manager = BackgroundTaskManager(registry, **manager_options)
            await manager.__aenter__()
            return manager

        try:
            self._manager = self._portal.call(start)
        except BaseException:
            self._stop_loop()
            raise
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<SyncTaskManager {state} {self._manager!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def manager(self) -> BackgroundTaskManager:
        """The `BackgroundTaskManager` underneath (use it only from its own event loop)."""
        return self._manager

    @property
    def registry(self) -> RunRegistry:
        """Where runs are recorded."""
        return self._manager.registry

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise ManagerClosedError("closed")
        return self._portal.call(fn, *args)

    def submit(self, fn: Callable[..., Any], *args: Any, **options: Any) -> Run:
        """Record a run QUEUED and start it; returns the recorded `Run` (see `submit`).

        ``fn`` may be a plain function (it runs in a worker thread) or an async one;
        ``options`` are those of `BackgroundTaskManager.submit` plus ``fn``'s keywords.
        """

        async def submit() -> Run:
            return await self._manager.submit(fn, *args, **options)

        result: Run = self._call(submit)
        return result

    def get_run(self, run_id: str) -> Run | None:
        """The run's current record, or None."""
        result: Run | None = self._call(self._manager.registry.get_run, run_id)
        return result

    def cancel_task(self, run_id: str) -> bool:
        """Cancel a queued or running run (see `BackgroundTaskManager.cancel_task`)."""
        result: bool = self._call(self._manager.cancel_task, run_id)
        return result

    def wait(self, run_id: str, timeout: float | None = None) -> Run:
        """Block until the run has finished; its terminal record.

        Raises:
            TimeoutError: it did not finish within ``timeout`` seconds.
        """
        result: Run = self._call(self._manager.wait, run_id, timeout)
        return result

    def wait_all(self, timeout: float | None = None) -> None:
        """Block until nothing is queued or running here (see `wait_all`)."""
        self._call(self._manager.wait_all, timeout)

    def stats(self) -> ManagerStats:
        """A snapshot of counts, limits and per-name outcomes."""
        result: ManagerStats = self._call(self._manager.stats)
        return result

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting runs, let them finish for ``grace`` seconds, cancel the rest.

        Every record is written before it returns (within ``registry_timeout`` while the
        registry is unreachable); the event loop thread then stops. Calling it again does
        nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._portal.call(self._manager.shutdown, grace)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._portal.call(self._portal.stop)
        self._thread.join()
