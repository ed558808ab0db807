"""The state a manager's parts share, and the manager's lifecycle states.

`BackgroundTaskManager` is a facade assembled from one mixin per concept: `Lifecycle`
(start and shutdown), `Queueing` (admission and the pump), `Execution` (the executor loop
and each run's end) and `Cancelling` (cancellation, waits, and waits for writes bounded by
``registry_timeout``); its collaborators are objects of their own (`Heartbeat`,
`Listeners`, `ThreadRuns`, the writer, the lanes, the stats). `ManagerCore` declares, for
the type checker, the state and methods the mixins share; `runtrack._wiring.assemble`
sets them when the manager is created.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from runtrack._admission import Job, Lanes
    from runtrack._heartbeat import Heartbeat
    from runtrack._listeners import Listeners
    from runtrack._logging import Logger
    from runtrack._models import RunEvent
    from runtrack._options import Options
    from runtrack._queue_depth import QueueDepth
    from runtrack._stats import StatsCollector
    from runtrack._status import RunStatus
    from runtrack._threads import ThreadRuns
    from runtrack._writer import Writer
    from runtrack.registry.base import RunRegistry

__all__ = ["ManagerCore", "State"]

_T = TypeVar("_T")


class State(enum.Enum):
    """Where a manager is in its life."""

    CREATED = "created"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class ManagerCore:
    """The state and methods a manager's mixins share (declarations only)."""

    if TYPE_CHECKING:
        registry: RunRegistry
        owner: str
        _options: Options
        _heartbeat: Heartbeat
        _depth: QueueDepth
        _closed: asyncio.Event
        _submits: set[asyncio.Future[None]]
        _max_concurrency: int | None
        _state: State
        _lanes: Lanes
        _writer: Writer
        _jobs: dict[str, Job]
        _finishing: dict[str, Job]
        _waiting: int
        _delayed: int
        _running: int
        _executors: int
        _starting: int
        _limit: int
        _ramp: int
        _max_pending: int | None
        _loop: asyncio.AbstractEventLoop | None
        _idle: asyncio.Event
        _listeners: list[Callable[[RunEvent], object]]
        _events: Listeners
        _hold_chosen_ids: bool
        _background: set[asyncio.Task[Any]]
        _executor_tasks: set[asyncio.Task[None]]
        _stats: StatsCollector
        _log: Logger
        _debug: bool
        _max_payload: int | None
        _max_short_str: int
        _pump_scheduled: bool
        _backend: str
        _cancel_timeout: float
        _registry_timeout: float
        _lease: timedelta
        _threads: ThreadRuns
        _default_timeout: float | None

        def _check_parameters(self, parameters: Mapping[str, Any]) -> None: ...

        async def _bounded(self, write: Awaitable[_T], what: str = "") -> _T: ...

        async def _cancel_job(self, job: Job, *, wait_write: bool = True) -> bool: ...

        def _start(self) -> asyncio.AbstractEventLoop: ...

        def _spawn_background(self, coro: Coroutine[Any, Any, None]) -> None: ...

        def _release_delayed(self, job: Job) -> None: ...

        def _pump(self) -> None: ...

        def _forget(self, job: Job) -> None: ...

        def _register(self, job: Job) -> None: ...

        def _push(self, job: Job, loop: asyncio.AbstractEventLoop) -> None: ...

        def _drop_queued(self, job: Job) -> None: ...

        async def _executor(self) -> None: ...

        def _finish_local(
            self,
            job: Job,
            status: RunStatus,
            previous: RunStatus,
            duration: float | None,
            error: BaseException | None = None,
        ) -> None: ...

        def _status_in_registry(self, job: Job) -> RunStatus: ...
