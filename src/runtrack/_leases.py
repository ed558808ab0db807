"""Leases: a run whose manager stopped heartbeating is recorded FAILED (``RunInterrupted``).

Every manager heartbeats its running runs. A manager that crashed (killed, out of memory,
its machine gone) leaves them RUNNING for ever; any other manager sharing the registry
finds them once their last heartbeat is older than its lease and records them FAILED with
``error_type="RunInterrupted"``. The write is a compare-and-set from RUNNING, so when
several managers find the same run only one records it, and a run that finished in the
meantime is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from runtrack._models import RunEvent, utcnow
from runtrack._status import RunStatus

if TYPE_CHECKING:
    from runtrack._models import Run
    from runtrack.registry.base import RunRegistry

__all__ = ["INTERRUPTED", "expired_runs", "interrupt", "interrupt_expired", "last_sign_of_life"]

#: The ``error_type`` of a run whose manager stopped heartbeating.
INTERRUPTED: Final = "RunInterrupted"
_PAGE: Final = 500


def last_sign_of_life(run: Run) -> datetime:
    """When the run's manager was last known to be alive."""
    return run.heartbeat_at or run.started_at or run.created_at


async def expired_runs(
    registry: RunRegistry, *, owner: str, now: datetime, lease: timedelta
) -> list[Run]:
    """RUNNING runs of other managers whose last heartbeat is older than ``lease``."""
    expired: list[Run] = []
    offset = 0
    while True:
        page = await registry.list_runs(status=RunStatus.RUNNING, limit=_PAGE, offset=offset)
        expired.extend(
            run for run in page if run.owner != owner and now - last_sign_of_life(run) > lease
        )
        if len(page) < _PAGE:
            return expired
        offset += _PAGE


async def interrupt(registry: RunRegistry, run: Run, *, by: str, now: datetime) -> Run | None:
    """Record ``run`` FAILED with `INTERRUPTED`; None if it is no longer RUNNING."""
    seen = last_sign_of_life(run).isoformat(timespec="seconds")
    return await registry.transition(
        run.run_id,
        RunStatus.FAILED,
        expect=RunStatus.RUNNING,
        finished_at=now,
        error_type=INTERRUPTED,
        error_message=(
            f"its manager {run.owner or '(unknown)'} stopped heartbeating (last seen "
            f"{seen}); recorded by {by}. Start it again if the work must be done."
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
        if await interrupt(registry, run, by=owner, now=now) is None:
            continue  # finished meanwhile, or another manager recorded it first
        done += 1
        log.warning(
            "run_interrupted",
            run_id=run.run_id,
            name=run.name,
            run_owner=run.owner,
            last_heartbeat=last_sign_of_life(run).isoformat(),
            detail="its manager stopped heartbeating (crashed?); recorded FAILED with "
            "error_type RunInterrupted",
        )
        notify(
            RunEvent(
                run_id=run.run_id,
                name=run.name,
                status=RunStatus.FAILED,
                previous=RunStatus.RUNNING,
                at=now,
                attempt=run.attempt,
                group=run.group,
                error_type=INTERRUPTED,
                error_message="its manager stopped heartbeating",
            )
        )
    return done
