"""Manager presence: the row each manager keeps in its registry, and what a sweep records.

Every manager sharing a registry that offers `ManagerPresence` (memory, SQL, Redis)
registers a `ManagerInfo` when it starts and refreshes its ``heartbeat_at`` once per
``heartbeat_interval``, whatever the number of its runs. A manager whose heartbeat is
older than its own ``lease_seconds`` is dead: a survivor removes its row and records its
RUNNING runs FAILED and its QUEUED runs CANCELLED, both with ``error_type`` `INTERRUPTED`,
in one compare-and-set per dead owner (see ``ManagerPresence.interrupt_dead_managers``).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from runtrack._models import RunEvent, UTCDatetime
from runtrack._status import RunStatus

__all__ = ["INTERRUPTED", "InterruptedRun", "ManagerInfo", "interrupted_message"]

#: The ``error_type`` of a run whose manager stopped heartbeating.
INTERRUPTED: Final = "RunInterrupted"


class ManagerInfo(BaseModel):
    """One manager sharing a registry, as `registry.list_managers()` returns it.

    Attributes:
        owner: The manager's name (its runs' ``owner``); unique among live managers.
        host: The host name of its process.
        pid: Its process id.
        started_at: When it registered.
        heartbeat_at: Its last heartbeat (liveness is this, not the runs' ``heartbeat_at``).
        lease_seconds: How long after ``heartbeat_at`` it counts as dead: its own lease,
            the one every survivor judges it by.
        max_concurrency: Its concurrency limit (None: unbounded).
        running: How many runs it was executing at its last heartbeat.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    owner: str = Field(min_length=1)
    host: str = ""
    pid: int = 0
    started_at: UTCDatetime
    heartbeat_at: UTCDatetime
    lease_seconds: float = Field(gt=0, allow_inf_nan=False)
    max_concurrency: int | None = None
    running: int = Field(default=0, ge=0)

    @property
    def lease(self) -> timedelta:
        """``lease_seconds`` as a `timedelta`."""
        return timedelta(seconds=self.lease_seconds)

    def expired(self, now: datetime) -> bool:
        """Whether its heartbeat is older than its own lease at ``now``."""
        return now - self.heartbeat_at > self.lease


@dataclasses.dataclass(frozen=True, slots=True)
class InterruptedRun:
    """A run a sweep recorded interrupted: FAILED if it was RUNNING, else CANCELLED."""

    run_id: str
    name: str
    owner: str
    previous: RunStatus
    status: RunStatus
    attempt: int
    group: str | None


def interrupted_message(owner: str, last_seen: datetime, by: str, *, started: bool) -> str:
    """The ``error_message`` of a run whose manager ``owner`` was found dead by ``by``."""
    seen = last_seen.isoformat(timespec="seconds")
    return (
        f"{'' if started else 'never started: '}its manager {owner} stopped heartbeating "
        f"(last seen {seen}); recorded by {by}. Start it again if the work must be done."
    )


def interrupted_changes(owner: str, last_seen: datetime, by: str) -> dict[str, Any]:
    """The error fields of both kinds of interrupted run, keyed by the status they end in."""
    return {
        RunStatus.FAILED.value: interrupted_message(owner, last_seen, by, started=True),
        RunStatus.CANCELLED.value: interrupted_message(owner, last_seen, by, started=False),
    }


def interrupted_event(
    run_id: str,
    name: str,
    status: RunStatus,
    previous: RunStatus,
    *,
    at: datetime,
    attempt: int,
    group: str | None,
) -> RunEvent:
    """The event of a run recorded interrupted because its manager stopped heartbeating."""
    return RunEvent(
        run_id=run_id,
        name=name,
        status=status,
        previous=previous,
        at=at,
        attempt=attempt,
        group=group,
        error_type=INTERRUPTED,
        error_message="its manager stopped heartbeating",
    )
