"""Helpers shared by the `BackgroundTaskManager` tests.

``test_manager.py``, ``test_manager_races.py`` and ``test_manager_stateful.py`` import
these as ``from helpers import ...``: run bodies the test controls (`Gate`), bounded waits
that turn a hang into a failure, and a registry that offers only the `RunRegistry`
protocol, so the manager has to go through its queued writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Final, Self

from runtrack import (
    TERMINAL,
    BackgroundTaskManager,
    InMemoryRunRegistry,
    OutputChunk,
    Run,
    RunRegistry,
    RunStatus,
)
from runtrack.registry.base import OutputItem, StatusFilter

#: Seconds any single wait in a test may take before the test fails instead of hanging.
#: Only a bound: a passing test never waits this long, and a busy machine (several test
#: suites on two cores) must not turn a slow step into a failure.
SAFETY: Final = 10.0

#: The statuses of a run that has not ended yet.
ACTIVE: Final = (RunStatus.QUEUED, RunStatus.RUNNING)

#: A fixture's callable that builds a manager (the options vary by test module).
ManagerFactory = Callable[..., BackgroundTaskManager]


async def wait_event(event: asyncio.Event, timeout: float = SAFETY) -> None:
    """Wait for ``event``, failing the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        await event.wait()


async def wait_until(
    condition: Callable[[], object], timeout: float = SAFETY, *, every: float = 0.005
) -> None:
    """Poll ``condition`` until it is true, failing the test after ``timeout`` seconds.

    For what no event announces (a server-side expiry, a connection the driver reopens):
    the test waits for the condition itself, never for a guessed duration.
    """
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(every)


async def let_loop_run(iterations: int = 20) -> None:
    """Let the event loop run ``iterations`` times.

    Used to steer races by a number of loop iterations, and to give every ready callback a
    chance to run when a test shows that nothing happens.
    """
    for _ in range(iterations):
        await asyncio.sleep(0)


async def shut_down(manager: BackgroundTaskManager) -> list[str]:
    """Give ``manager``'s runs a bounded time to end, then shut it down at once.

    Returns:
        The ids of the runs that were still active when that time ran out.
    """
    leaked: list[str] = []
    try:
        await manager.wait_all(timeout=SAFETY / 2)
    except TimeoutError:
        leaked = manager.get_active_task_ids()
    await manager.shutdown(grace=0)
    return leaked


@asynccontextmanager
async def manager_factory(
    registry: RunRegistry, store: RunRegistry, **defaults: Any
) -> AsyncIterator[ManagerFactory]:
    """Yield a callable that builds managers on ``registry``; on exit, shut each one down.

    Afterwards nothing may be active in ``store`` (the registry the test reads, ``registry``
    itself or the data behind it), and no run may have outlived its manager's shutdown.
    ``defaults`` are manager options every manager gets unless the call overrides them.
    """
    made: list[BackgroundTaskManager] = []

    def make(**options: Any) -> BackgroundTaskManager:
        options = {"heartbeat_interval": 0.02, "cancel_timeout": SAFETY, **defaults, **options}
        manager = BackgroundTaskManager(registry, **options)
        made.append(manager)
        return manager

    yield make
    leaked: list[str] = []
    for manager in made:
        leaked += await shut_down(manager)
    assert not await store.list_runs(status=ACTIVE), "a run was left active"
    assert not leaked, f"runs still active after the test: {leaked}"


class Gate:
    """A run body the test controls: it reports that it started, then waits to be released.

    ``started_at`` is the event loop's time when the body began: the manager arms a run's
    timeout in the same step, so a test can schedule an operation relative to the deadline
    itself, whatever delay a busy machine put between the start and the test's next line.
    With ``swallow_cancel`` the body returns ``"swallowed"`` instead of re-raising when it
    is cancelled.
    """

    def __init__(self, label: str = "gate", *, swallow_cancel: bool = False) -> None:
        self.label = label
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.starts = 0
        self.started_at: float | None = None
        self.swallow_cancel = swallow_cancel
        self._release: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def open(self, result: Any = "done") -> None:
        """Let the body return ``result``."""
        if not self._release.done():
            self._release.set_result(result)

    def fail(self, exc: BaseException) -> None:
        """Let the body raise ``exc``."""
        if not self._release.done():
            self._release.set_exception(exc)

    async def body(self) -> Any:
        """The run's code."""
        self.starts += 1
        self.started_at = asyncio.get_running_loop().time()
        self.started.set()
        try:
            return await asyncio.shield(self._release)
        except asyncio.CancelledError:
            self.cancelled.set()
            if self.swallow_cancel:
                return "swallowed"
            raise


class DelegatingRegistry:
    """Only the `RunRegistry` protocol, over an in-memory registry.

    The manager cannot take its in-memory fast path through this, so every test using it
    exercises the queued writer. ``inner`` is a fresh `InMemoryRunRegistry` unless given.

    Setting ``hold_add_run`` to an event makes `add_run` wait until the test sets it, with
    ``adding`` set while it waits, so a test can act while a QUEUED write is in flight.
    """

    def __init__(self, inner: InMemoryRunRegistry | None = None) -> None:
        self.inner = inner if inner is not None else InMemoryRunRegistry()
        self.hold_add_run: asyncio.Event | None = None
        self.adding = asyncio.Event()

    async def add_run(self, run: Run) -> None:
        if self.hold_add_run is not None:
            self.adding.set()
            await self.hold_add_run.wait()
        await self.inner.add_run(run)

    async def get_run(self, run_id: str) -> Run | None:
        return await self.inner.get_run(run_id)

    async def transition(
        self,
        run_id: str,
        to: RunStatus | str,
        /,
        *,
        expect: StatusFilter = None,
        **changes: Any,
    ) -> Run | None:
        return await self.inner.transition(run_id, to, expect=expect, **changes)

    async def update_run(self, run_id: str, /, **changes: Any) -> Run:
        return await self.inner.update_run(run_id, **changes)

    async def list_runs(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        group: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
        task: str | None = None,
        dead: bool | None = None,
    ) -> list[Run]:
        return await self.inner.list_runs(
            status=status,
            name=name,
            group=group,
            tags=tags,
            limit=limit,
            offset=offset,
            task=task,
            dead=dead,
        )

    async def count_runs(self, *, name: str | None = None) -> dict[RunStatus, int]:
        return await self.inner.count_runs(name=name)

    async def append_output(self, run_id: str, chunks: Iterable[OutputItem]) -> list[OutputChunk]:
        return await self.inner.append_output(run_id, chunks)

    async def get_output(
        self, run_id: str, *, since: int = 0, limit: int | None = None
    ) -> list[OutputChunk]:
        return await self.inner.get_output(run_id, since=since, limit=limit)

    async def cleanup_old_runs(
        self,
        *,
        older_than: timedelta,
        statuses: StatusFilter = TERMINAL,
        keep: int = 0,
    ) -> int:
        return await self.inner.cleanup_old_runs(
            older_than=older_than, statuses=statuses, keep=keep
        )

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
