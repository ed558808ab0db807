"""Leases: a run whose manager stopped heartbeating is recorded FAILED (``RunInterrupted``).

Every manager heartbeats its running runs. A manager that crashed (killed, out of memory,
its machine gone) leaves them RUNNING for ever; any other manager sharing the registry
finds them once their last heartbeat is older than its lease and records them FAILED with
``error_type="RunInterrupted"``, and the runs the dead manager had queued CANCELLED with
the same ``error_type``. Each write is a compare-and-set from the status the run was found
in, so when several managers find the same run only one records it, and a run that moved
on meanwhile is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from runtrack._models import RunEvent, utcnow
from runtrack._presence import INTERRUPTED, interrupted_event
from runtrack._status import RunStatus

if TYPE_CHECKING:
    from runtrack._models import Run
    from runtrack.registry.base import RunRegistry

__all__ = ["INTERRUPTED", "expired_runs", "interrupt", "interrupt_expired", "last_sign_of_life"]

#: The ``error_type`` of a run whose manager stopped heartbeating.
_PAGE: Final = 500


def last_sign_of_life(run: Run) -> datetime:
    """When the run's manager was last known to be alive."""
    return run.heartbeat_at or run.started_at or run.created_at


async def _all(registry: RunRegistry, status: RunStatus) -> list[Run]:
    runs: list[Run] = []
    while True:
        page = await registry.list_runs(status=status, limit=_PAGE, offset=len(runs))
        runs.extend(page)
        if len(page) < _PAGE:
            return runs


async def expired_runs(
    registry: RunRegistry, *, owner: str, now: datetime, lease: timedelta
) -> list[Run]:
    """Runs that a manager which stopped heartbeating will never finish.

    The RUNNING runs of other managers whose last heartbeat is older than ``lease`` (a run
    with no ``owner`` was not started by a manager: it is left alone), then
    the QUEUED runs of those same managers created before their last sign of life (a
    process restarted under the same ``owner`` name keeps the runs it queued since).
    """
    running = [
        run
        for run in await _all(registry, RunStatus.RUNNING)
        if run.owner not in (owner, None) and now - last_sign_of_life(run) > lease
    ]
    last_seen: dict[str, datetime] = {}
    for run in running:
        if run.owner is not None:  # always, as filtered above
            seen = last_sign_of_life(run)
            last_seen[run.owner] = max(seen, last_seen.get(run.owner, seen))
    if not last_seen:
        return running
    queued = [
        run
        for run in await _all(registry, RunStatus.QUEUED)
        if run.owner in last_seen and run.created_at <= last_seen[run.owner]
    ]
    return running + queued


async def interrupt(registry: RunRegistry, run: Run, *, by: str, now: datetime) -> Run | None:
    """Record ``run`` interrupted; None if its status changed meanwhile.

    A RUNNING run becomes FAILED, a QUEUED one (it never started) CANCELLED, both with
    ``error_type`` `INTERRUPTED`.
    """
    seen = last_sign_of_life(run).isoformat(timespec="seconds")
    started = run.status is RunStatus.RUNNING
    return await registry.transition(
        run.run_id,
        RunStatus.FAILED if started else RunStatus.CANCELLED,
        expect=run.status,
        finished_at=now,
        error_type=INTERRUPTED,
        error_message=(
            f"{'' if started else 'never started: '}its manager {run.owner or '(unknown)'} "
            f"stopped heartbeating (last seen {seen}); recorded by {by}. "
            "Start it again if the work must be done."
        ),
    )


async def interrupt_expired(
    registry: RunRegistry,
    *,
    owner: str,
    lease: timedelta,
    log: Any,
    notify: Callable[[RunEvent], None],
) -> int:
    """Interrupt every expired run (see `expired_runs`); returns how many this call did.

    Each one is logged (``run_interrupted``) and passed to ``notify`` as a `RunEvent`.
    """
    now = utcnow()
    done = 0
    for run in await expired_runs(registry, owner=owner, now=now, lease=lease):
        recorded = await interrupt(registry, run, by=owner, now=now)
        if recorded is None:
            continue  # finished meanwhile, or another manager recorded it first
        done += 1
        log.warning(
            "run_interrupted",
            run_id=run.run_id,
            name=run.name,
            run_owner=run.owner,
            last_heartbeat=last_sign_of_life(run).isoformat(),
            status=recorded.status.value,
            detail="its manager stopped heartbeating (crashed?); recorded with "
            "error_type RunInterrupted",
        )
        notify(
            interrupted_event(
                run.run_id,
                run.name,
                recorded.status,
                run.status,
                at=now,
                attempt=run.attempt,
                group=run.group,
            )
        )
    return done
