"""`TaskClaiming` for `InMemoryRunRegistry`: durable runs shared by managers of one process."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from runtrack._clock import now_us
from runtrack._exceptions import DuplicateRunError
from runtrack._models import Run
from runtrack._status import RunStatus

if TYPE_CHECKING:
    from runtrack.registry.memory import _Record

__all__ = ["MemoryClaims"]

_CLAIMED = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})


class MemoryClaims:
    """Claiming in an in-memory registry (mixed into `InMemoryRunRegistry`).

    Each call runs without an await, so it is atomic on the event loop.
    """

    if TYPE_CHECKING:
        _runs: dict[str, _Record]

        def _insert(self, rec: _Record) -> bool: ...

        @staticmethod
        def _record_of(run: Run) -> _Record: ...

    async def add_runs(self, runs: Sequence[Run]) -> None:
        """Record new runs, all or none (see `TaskClaiming`)."""
        seen: set[str] = set()
        for run in runs:
            if not isinstance(run, Run):
                raise TypeError(f"add_runs() takes Runs, got {type(run).__name__}")
            if run.run_id in seen or run.run_id in self._runs:
                raise DuplicateRunError(run.run_id)
            seen.add(run.run_id)
        for run in runs:
            self._insert(self._record_of(run))

    async def claim_runs(self, owner: str, tasks: Collection[str], limit: int) -> list[Run]:
        """Take up to ``limit`` due, unclaimed QUEUED runs of ``tasks`` (see `TaskClaiming`)."""
        if limit < 1 or not tasks:
            return []
        wanted = set(tasks)
        now = now_us()
        found = [
            rec
            for rec in self._runs.values()
            if rec.task in wanted
            and rec.status is RunStatus.QUEUED
            and rec.owner is None
            and (rec.not_before is None or rec.not_before <= now)
        ]
        found.sort(key=lambda rec: (-rec.priority, rec.created_at, rec.run_id))
        taken = found[:limit]
        for rec in taken:
            rec.status = RunStatus.RUNNING
            rec.owner = owner
            rec.started_at = rec.heartbeat_at = max(now, rec.not_before or 0)
        return [rec.to_run() for rec in taken]

    async def release_runs(self, owner: str, run_ids: Sequence[str]) -> int:
        """Unclaim those of ``run_ids`` still claimed by ``owner`` (see `TaskClaiming`)."""
        released = 0
        for run_id in run_ids:
            rec = self._runs.get(run_id)
            if rec is not None and rec.owner == owner and rec.status in _CLAIMED:
                if rec.status is RunStatus.RUNNING:
                    rec.status = RunStatus.QUEUED
                    rec.started_at = rec.heartbeat_at = None
                rec.owner = None
                released += 1
        return released
