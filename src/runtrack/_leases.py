"""Leases: a run whose manager stopped heartbeating is recorded FAILED (``RunInterrupted``).

Every manager heartbeats its running runs. A manager that crashed (killed, out of memory,
its machine gone) leaves them RUNNING for ever; any other manager sharing the registry
finds them once their last heartbeat is older than its lease and records them FAILED with
``error_type="RunInterrupted"``. The write is a compare-and-set from RUNNING, so when
several managers find the same run only one records it, and a run that finished in the
meantime is left alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from runtrack._status import RunStatus

if TYPE_CHECKING:
    from runtrack._models import Run
    from runtrack.registry.base import RunRegistry

__all__ = ["INTERRUPTED", "expired_runs", "interrupt", "last_sign_of_life"]

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
