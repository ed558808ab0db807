"""Run statuses and the one table of legal transitions between them."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

__all__ = ["PREDECESSORS", "TERMINAL", "RunStatus", "check_transition", "normalize_statuses"]


class RunStatus(enum.StrEnum):
    """Where a run is in its life.

    ``QUEUED → RUNNING → COMPLETED | FAILED | CANCELLED``; a queued run may also be
    cancelled before it starts, and a running run goes back to ``QUEUED`` for a retry.
    The values are the lower-case names, as they appear in JSON and query strings.
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the run is finished: nothing may change this status any more."""
        return self in TERMINAL


TERMINAL: Final = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

#: For each status, the statuses a run may legally move to it from.
PREDECESSORS: Final[dict[RunStatus, frozenset[RunStatus]]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING}),
    RunStatus.RUNNING: frozenset({RunStatus.QUEUED}),
    RunStatus.COMPLETED: frozenset({RunStatus.RUNNING}),
    RunStatus.FAILED: frozenset({RunStatus.RUNNING}),
    RunStatus.CANCELLED: frozenset({RunStatus.QUEUED, RunStatus.RUNNING}),
}


def _coerce(status: RunStatus | str) -> RunStatus:
    try:
        return RunStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in RunStatus)
        raise ValueError(f"unknown run status {status!r}: use one of {allowed}") from None


def normalize_statuses(
    statuses: RunStatus | str | Iterable[RunStatus | str] | None,
) -> frozenset[RunStatus] | None:
    """Turn one status, many, or None into a frozenset of `RunStatus` (None stays None).

    Raises:
        ValueError: a value is not a status.
    """
    if statuses is None:
        return None
    if isinstance(statuses, str):
        return frozenset((_coerce(statuses),))
    return frozenset(_coerce(s) for s in statuses)


def check_transition(
    to: RunStatus | str,
    expect: RunStatus | str | Iterable[RunStatus | str] | None,
) -> tuple[RunStatus, frozenset[RunStatus]]:
    """Validate a requested transition and resolve its expected predecessors.

    ``expect=None`` means the legal predecessors of ``to``. An explicit ``expect`` may only
    narrow them: asking for an illegal move (say ``COMPLETED → RUNNING``) is a `ValueError`.

    Returns:
        The target status and the set of statuses the transition may apply from.
    """
    target = _coerce(to)
    legal = PREDECESSORS[target]
    wanted = normalize_statuses(expect)
    if wanted is None:
        return target, legal
    illegal = wanted - legal
    if illegal:
        names = ", ".join(sorted(s.value for s in illegal))
        allowed = ", ".join(sorted(s.value for s in legal))
        raise ValueError(
            f"illegal transition {names} -> {target.value}: a run may reach "
            f"{target.value} only from {allowed}"
        )
    return target, wanted
