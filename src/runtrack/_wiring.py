"""How a `BackgroundTaskManager` is put together: its state and its collaborators.

The manager's ``__init__`` checks its arguments and calls `assemble`, which sets what the
mixins share (declared by `ManagerCore`) and builds the objects the manager delegates to:
the writer, the lanes, the heartbeat and presence, the claim loop of durable tasks, the
announcer of new work, the queue depth. Kept apart so that the manager's module holds its
public API and this one the wiring between the parts.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from runtrack._admission import Lanes
from runtrack._announcing import Announcer
from runtrack._background import default_manager_or_none
from runtrack._claims import ClaimLoop
from runtrack._heartbeat import Heartbeat
from runtrack._listeners import Listeners
from runtrack._logging import get_logger
from runtrack._options import UNBOUNDED, Options
from runtrack._queue_depth import QueueDepth
from runtrack._queueing import FIRST_BATCH
from runtrack._recording import backend_name, writer_for
from runtrack._state import State
from runtrack._stats import StatsCollector
from runtrack._tasks import default_tasks
from runtrack._threads import ThreadRuns
from runtrack._writer import DirectWriter
from runtrack.registry._notifying import Notifying

if TYPE_CHECKING:
    from runtrack._manager import BackgroundTaskManager
    from runtrack.registry.base import RunRegistry

__all__ = ["assemble"]


def assemble(
    manager: BackgroundTaskManager, registry: RunRegistry, owner: str, options: Options
) -> None:
    """Set ``manager``'s state and build its collaborators (see the module docstring)."""
    m = manager
    m.registry = registry
    m.owner = owner
    m._options = options
    m._writer = writer_for(
        registry, owner, on_conflict=m._on_conflict, on_finished=m._on_finished,
        registry_timeout=options.registry_timeout,
    )  # fmt: skip
    # A chosen run id may name a run that already ended: the in-memory registry says so
    # at once (insert raises), the others when they answer, so such runs wait for them.
    m._hold_chosen_ids = not isinstance(m._writer, DirectWriter)
    m._max_concurrency = options.max_concurrency
    m._limit = options.max_concurrency or UNBOUNDED
    m._max_pending = options.max_pending
    m._max_payload = options.max_payload_bytes
    # str results shorter than this cannot be over the limit: no need to measure them.
    m._max_short_str = (options.max_payload_bytes or sys.maxsize) // 4 - 2
    m._default_timeout = options.default_timeout
    m._cancel_timeout = options.cancel_timeout
    m._registry_timeout = options.registry_timeout
    m._lanes = Lanes(options.group_limits)
    m._jobs = {}
    # Runs whose code has ended but whose terminal write is still on its way.
    m._finishing = {}
    m._backend = backend_name(registry)
    m._submits = set()  # submit() calls writing their run
    m._waiting = 0  # jobs in the lanes (admissible when a slot frees)
    m._delayed = 0  # queued jobs waiting for a delay or a retry backoff
    m._running = 0
    m._executors = 0
    m._starting = 0  # executors created that have not taken their first job yet
    m._ramp = FIRST_BATCH
    m._pump_scheduled = False
    m._state = State.CREATED
    m._loop = None
    m._idle = asyncio.Event()
    m._idle.set()
    m._closed = asyncio.Event()
    m._background = set()
    m._executor_tasks = set()
    m._stats = StatsCollector()
    m._log = log = get_logger(owner=owner)
    m._threads = ThreadRuns(options.max_threads, log)
    m._events = Listeners(m._spawn_background, log)
    m._listeners = m._events.callbacks  # the hot path tests it before emitting
    m._heartbeat = Heartbeat(
        registry=registry, writer=m._writer, owner=owner,
        interval=options.heartbeat_interval, lease=options.lease, jobs=m._jobs,
        on_conflict=m._on_conflict, notify=m._events.dispatch, log=log,
        poll_interval=options.poll_interval, counts=lambda: (m._running, m._max_concurrency),
        resume=m._wake_pump,
    )  # fmt: skip
    m._claims = claims = ClaimLoop(
        m, poll_interval=options.poll_interval,
        extra=lambda: default_tasks() if default_manager_or_none() is m else {},
    )  # fmt: skip
    # Durable work is announced to the other managers, and their announcements wake ours.
    m._announcer = None
    if isinstance(registry, Notifying):
        m._announcer = claims.announce = Announcer(registry.announce_new_work, log)
    if (presence := m._heartbeat.presence) is not None:
        presence.on_new_work = lambda _task: claims.wake()
    m._depth = QueueDepth(registry, options.heartbeat_interval, log, options.registry_timeout)
    # Resolved here and again at start, not per event: each transition would pay for it.
    m._debug = log.is_enabled_for(logging.DEBUG)
