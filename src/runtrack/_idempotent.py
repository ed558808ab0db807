"""``submit(..., idempotency_key=...)``: one run per key, across every manager.

The registry does the deciding (`IdempotentAdding.add_run_once`, atomic across
processes); this module puts the manager around it: the run it inserted is then started
as a run recorded before it started (as `start_task` takes one), and when another run
holds the key, that run is returned and the coroutine given is closed, never started.
"""

from __future__ import annotations

import asyncio
import weakref
from datetime import timedelta
from typing import TYPE_CHECKING, Final

from runtrack._admission import Job
from runtrack._exceptions import ManagerClosedError
from runtrack._execution import close_coro
from runtrack._models import Run, utcnow
from runtrack._state import State
from runtrack._status import RunStatus
from runtrack.registry._idempotency import IdempotentAdding, check_idempotency_key
from runtrack.registry.base import RunRegistry

if TYPE_CHECKING:
    from runtrack._manager import BackgroundTaskManager

__all__ = ["add_once", "submit_once"]

#: Most ``add_run_once`` calls one process has in flight per registry: a burst of keyed
#: submits then waits its turn instead of asking the registry's pool for a connection
#: each (Redis refuses the call past its pool size).
MAX_IN_FLIGHT: Final = 16
_slots: weakref.WeakKeyDictionary[RunRegistry, asyncio.Semaphore] = weakref.WeakKeyDictionary()


async def add_once(registry: RunRegistry, run: Run, ttl: timedelta) -> tuple[Run, bool]:
    """``registry.add_run_once(run, ttl=ttl)``, or a `TypeError` if the registry cannot.

    What ``fn.submit(..., idempotency_key=...)`` of a durable task calls with its run
    (``run.idempotency_key`` set, checked with `check_idempotency_key`).
    """
    if not isinstance(registry, IdempotentAdding):
        raise TypeError(
            f"idempotency_key needs a registry that implements IdempotentAdding (the memory, "
            f"SQL and Redis ones do); {type(registry).__name__} does not"
        )
    slots = _slots.get(registry)
    if slots is None:
        slots = _slots[registry] = asyncio.Semaphore(MAX_IN_FLIGHT)
    async with slots:
        return await registry.add_run_once(run, ttl=ttl)


async def submit_once(
    manager: BackgroundTaskManager,
    run: Run,
    job: Job,
    loop: asyncio.AbstractEventLoop,
    delay: float | None,
    key: object,
) -> Run:
    """Record ``run`` under ``key`` and start ``job``, or return the run holding ``key``.

    Raises:
        TypeError: ``key`` is not a str, or the registry cannot deduplicate.
        ValueError: ``key`` is empty or too long.
        ManagerClosedError: shutdown began while the run was recorded (it is recorded
            CANCELLED).
    """
    try:
        key = check_idempotency_key(key)
        run = run.model_copy(update={"idempotency_key": key})
        job.idempotency_key = key
        held, inserted = await add_once(manager.registry, run, manager._options.idempotency_ttl)
    except BaseException:
        close_coro(job.coro)
        raise
    if not inserted:
        close_coro(job.coro)  # another run holds the key: this work is never started
        job.coro = None
        return held
    if manager._state is not State.RUNNING:
        close_coro(job.coro)
        await manager.registry.transition(
            run.run_id, RunStatus.CANCELLED, expect=RunStatus.QUEUED, finished_at=utcnow()
        )
        raise ManagerClosedError(manager._state.value)
    manager._start_job(job, loop, delay, chosen_id=True)
    return run
