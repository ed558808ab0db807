"""`ManagerPresence` for `InMemoryRunRegistry`: managers sharing one process's registry."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from runtrack._clock import dt_to_us
from runtrack._presence import INTERRUPTED, InterruptedRun, ManagerInfo, interrupted_changes
from runtrack._status import RunStatus
from runtrack.registry.base import sweep_dead_managers

if TYPE_CHECKING:
    from runtrack.registry.memory import _Record

__all__ = ["MemoryManagers"]

_ACTIVE = {RunStatus.RUNNING: RunStatus.FAILED, RunStatus.QUEUED: RunStatus.CANCELLED}


class MemoryManagers:
    """The managers table of an in-memory registry (mixed into `InMemoryRunRegistry`)."""

    if TYPE_CHECKING:
        _runs: dict[str, _Record]

    _managers: dict[str, ManagerInfo]

    def _manager_rows(self) -> dict[str, ManagerInfo]:
        rows: dict[str, ManagerInfo] | None = self.__dict__.get("_managers")
        if rows is None:
            rows = self._managers = {}
        return rows

    async def register_manager(self, info: ManagerInfo) -> None:
        """Insert or replace the row of ``info.owner`` (see `ManagerPresence`)."""
        if not isinstance(info, ManagerInfo):
            raise TypeError(f"register_manager() takes a ManagerInfo, got {type(info).__name__}")
        self._manager_rows()[info.owner] = info

    async def heartbeat_manager(self, owner: str, at: datetime, running: int) -> bool:
        """Refresh the manager's heartbeat; False if its row is gone (see `ManagerPresence`)."""
        rows = self._manager_rows()
        info = rows.get(owner)
        if info is None:
            return False
        rows[owner] = info.model_copy(update={"heartbeat_at": at, "running": running})
        return True

    async def unregister_manager(self, owner: str) -> None:
        """Remove the manager's row (see `ManagerPresence`)."""
        self._manager_rows().pop(owner, None)

    async def list_managers(self) -> list[ManagerInfo]:
        """Every registered manager, by owner (see `ManagerPresence`)."""
        rows = self._manager_rows()
        return [rows[owner] for owner in sorted(rows)]

    async def interrupt_dead_managers(self, now: datetime, by: str) -> list[InterruptedRun]:
        """Sweep managers past their own lease (see `ManagerPresence`).

        Costs O(managers) while every manager is alive; sweeping a dead one walks the runs
        of this process's registry once.
        """
        return await sweep_dead_managers(self, now, by)

    async def _interrupt_owner(
        self, info: ManagerInfo, now: datetime, by: str
    ) -> list[InterruptedRun]:
        rows = self._manager_rows()
        current = rows.get(info.owner)
        if current is None or current.heartbeat_at != info.heartbeat_at:
            return []  # swept by another survivor, or it beat again
        del rows[info.owner]
        messages = interrupted_changes(info.owner, info.heartbeat_at, by)
        finished = dt_to_us(now)
        swept: list[InterruptedRun] = []
        for rec in list(self._runs.values()):
            if rec.owner != info.owner or rec.status not in _ACTIVE:
                continue
            previous = rec.status
            if rec.task is not None and previous is RunStatus.QUEUED:
                rec.owner = None  # a durable run: another manager may claim it
                continue
            changes: dict[str, Any]
            if rec.task is not None and rec.requeue_on_interrupt:
                status = RunStatus.QUEUED
                changes = {
                    "owner": None,
                    "attempt": rec.attempt + 1,
                    "started_at": None,
                    "heartbeat_at": None,
                    "error_type": INTERRUPTED,
                    "error_message": messages[RunStatus.FAILED.value],
                }
            else:
                status = _ACTIVE[previous]
                changes = {
                    "finished_at": finished,
                    "error_type": INTERRUPTED,
                    "error_message": messages[status.value],
                }
            rec.status = status
            for field, value in changes.items():
                setattr(rec, field, value)
            swept.append(
                InterruptedRun(
                    rec.run_id, rec.name, info.owner, previous, status, rec.attempt, rec.group
                )
            )
        return swept

    async def cancelled_runs(self, owner: str, since: datetime) -> list[str]:
        """Runs of ``owner`` recorded CANCELLED since ``since`` (see `ManagerPresence`).

        Walks this process's runs: managers on this registry read their runs' records
        directly instead.
        """
        cutoff = dt_to_us(since)
        return [
            rec.run_id
            for rec in self._runs.values()
            if rec.owner == owner
            and rec.status is RunStatus.CANCELLED
            and rec.finished_at is not None
            and rec.finished_at >= cutoff
        ]
