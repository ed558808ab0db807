"""The state a manager's parts share, and the manager's lifecycle states.

`BackgroundTaskManager` is assembled from one mixin per concept: `Queueing` (admission
and the pump), `Execution` (the executor loop and each run's end) and `Cancelling`
(cancellation and bounded waits for writes). `ManagerCore` declares, for the type checker,
the state and methods they share; the manager's ``__init__`` sets them.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from runtrack._admission import Job, Lanes
    from runtrack._listeners import Listeners
    from runtrack._logging import Logger
    from runtrack._models import RunEvent
    from runtrack._stats import StatsCollector
    from runtrack._status import RunStatus
    from runtrack._threads import ThreadRuns
    from runtrack._writer import Writer

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
        owner: str
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
