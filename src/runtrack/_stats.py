"""`ManagerStats`: what a manager has done, for dashboards, metrics and alerts."""

from __future__ import annotations

import math
from collections import deque
from typing import Final

from pydantic import BaseModel, ConfigDict

from runtrack._status import RunStatus

__all__ = ["ManagerStats", "NameStats", "StatsCollector"]

#: Durations kept per name for the mean and p95 (the most recent ones).
DURATION_WINDOW: Final = 1024


class NameStats(BaseModel):
    """Outcomes of the runs of one name that finished in this manager."""

    model_config = ConfigDict(frozen=True)

    finished: int
    """Runs of this name that reached a terminal status here."""
    completed: int
    failed: int
    cancelled: int
    success_rate: float | None
    """completed / (completed + failed); None before any of either."""
    mean_duration: float | None
    """Mean seconds from start to finish over the recent runs that started."""
    p95_duration: float | None
    """95th percentile of the same durations."""


class ManagerStats(BaseModel):
    """A snapshot of a `BackgroundTaskManager` (``manager.stats()``)."""

    model_config = ConfigDict(frozen=True)

    state: str
    """``created``, ``running``, ``closing`` or ``closed``."""
    owner: str
    counts: dict[RunStatus, int]
    """Runs this manager took, by their status now (terminal ones since it started)."""
    queued: int
    running: int
    max_concurrency: int | None
    max_pending: int | None
    group_limits: dict[str, int]
    running_by_group: dict[str, int]
    by_name: dict[str, NameStats]
    queue_depth: dict[int, int] | None = None
    """QUEUED runs in the registry (every manager's) by priority, as last read: by
    `BackgroundTaskManager.queue_depth` or once per ``heartbeat_interval`` in the
    background; None before the first read."""


class _NameCounter:
    __slots__ = ("cancelled", "completed", "durations", "failed")

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.durations: deque[float] = deque(maxlen=DURATION_WINDOW)

    def snapshot(self) -> NameStats:
        decided = self.completed + self.failed
        durations = sorted(self.durations)
        p95 = durations[max(0, math.ceil(0.95 * len(durations)) - 1)] if durations else None
        return NameStats(
            finished=decided + self.cancelled,
            completed=self.completed,
            failed=self.failed,
            cancelled=self.cancelled,
            success_rate=self.completed / decided if decided else None,
            mean_duration=sum(durations) / len(durations) if durations else None,
            p95_duration=p95,
        )


class StatsCollector:
    """Counts outcomes per name as runs finish; cheap enough for every run."""

    __slots__ = ("_names",)

    def __init__(self) -> None:
        self._names: dict[str, _NameCounter] = {}

    def finished(self, name: str, status: RunStatus, duration: float | None) -> None:
        counter = self._names.get(name)
        if counter is None:
            counter = self._names[name] = _NameCounter()
        if status is RunStatus.COMPLETED:
            counter.completed += 1
        elif status is RunStatus.FAILED:
            counter.failed += 1
        else:
            counter.cancelled += 1
        if duration is not None:
            counter.durations.append(duration)

    def totals(self) -> dict[RunStatus, int]:
        counts = dict.fromkeys((RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED), 0)
        for c in self._names.values():
            counts[RunStatus.COMPLETED] += c.completed
            counts[RunStatus.FAILED] += c.failed
            counts[RunStatus.CANCELLED] += c.cancelled
        return counts

    def by_name(self) -> dict[str, NameStats]:
        return {name: c.snapshot() for name, c in sorted(self._names.items())}
