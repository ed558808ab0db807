"""`ManagerPresence` for `SQLRunRegistry`: the ``{prefix}managers`` table.

Each manager has one row, written once per heartbeat. Finding a dead manager reads this
table only; sweeping one is one transaction: delete its row if its heartbeat is still the
one read (the compare-and-set that makes one survivor win), then one ``UPDATE`` of its
QUEUED and RUNNING runs through the ``{prefix}runs_owner`` index (owner, status,
finished_at), which also serves `cancelled_runs`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from runtrack._clock import dt_to_us, us_to_dt
from runtrack._models import MAX_ID_LENGTH
from runtrack._presence import INTERRUPTED, InterruptedRun, ManagerInfo, interrupted_changes
from runtrack._status import RunStatus
from runtrack.registry._sql_host import SQLHost
from runtrack.registry.base import sweep_dead_managers

if TYPE_CHECKING:
    from runtrack.registry._sql_schema import Tables

__all__ = ["SQLManagers", "add_manager_tables"]

_RUNNING, _QUEUED = RunStatus.RUNNING.value, RunStatus.QUEUED.value
_FAILED, _CANCELLED = RunStatus.FAILED.value, RunStatus.CANCELLED.value


def add_manager_tables(tables: Tables, prefix: str) -> None:
    """Add the managers table, and the runs' index by owner, to ``tables``."""
    options: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
    tables.managers = sa.Table(
        f"{prefix}managers",
        tables.metadata,
        sa.Column("owner", sa.String(MAX_ID_LENGTH), primary_key=True),
        sa.Column("host", sa.String(MAX_ID_LENGTH), nullable=False),
        sa.Column("pid", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_at", sa.BigInteger, nullable=False),
        sa.Column("lease_us", sa.BigInteger, nullable=False),
        sa.Column("max_concurrency", sa.BigInteger),
        sa.Column("running", sa.BigInteger, nullable=False),
        **options,
    )
    runs = tables.runs
    # owner is a TEXT column: MySQL/MariaDB index a prefix of it. PostgreSQL and SQLite
    # index the owned runs only: a lookup by owner is all it serves, and an index of the
    # unowned QUEUED runs too could lure a claim off the claim index (see _sql_schema).
    owned = runs.c.owner.is_not(None)
    tables.runs_owner = sa.Index(
        f"{prefix}runs_owner",
        runs.c.owner,
        runs.c.status,
        runs.c.finished_at,
        mysql_length={"owner": 191},
        postgresql_where=owned,
        sqlite_where=owned,
    )


def _row(info: ManagerInfo) -> dict[str, Any]:
    return {
        "owner": info.owner,
        "host": info.host,
        "pid": info.pid,
        "started_at": dt_to_us(info.started_at),
        "heartbeat_at": dt_to_us(info.heartbeat_at),
        "lease_us": round(info.lease_seconds * 1_000_000),
        "max_concurrency": info.max_concurrency,
        "running": info.running,
    }


def _info(row: Any) -> ManagerInfo:
    return ManagerInfo(
        owner=row.owner,
        host=row.host,
        pid=int(row.pid),
        started_at=us_to_dt(int(row.started_at)),
        heartbeat_at=us_to_dt(int(row.heartbeat_at)),
        lease_seconds=int(row.lease_us) / 1_000_000,
        max_concurrency=None if row.max_concurrency is None else int(row.max_concurrency),
        running=int(row.running),
    )


class SQLManagers(SQLHost):
    """The managers table of a SQL registry (mixed into `SQLRunRegistry`)."""

    async def register_manager(self, info: ManagerInfo) -> None:
        """Insert or replace the row of ``info.owner`` (see `ManagerPresence`)."""
        if not isinstance(info, ManagerInfo):
            raise TypeError(f"register_manager() takes a ManagerInfo, got {type(info).__name__}")
        managers = self._tables.managers
        row = _row(info)

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(managers.delete().where(managers.c.owner == info.owner))
            await conn.execute(managers.insert(), row)

        await self._transact(work, write=True, retry_integrity=True)

    async def heartbeat_manager(self, owner: str, at: datetime, running: int) -> bool:
        """Refresh the manager's heartbeat; False if its row is gone (see `ManagerPresence`)."""
        managers = self._tables.managers
        statement = (
            managers.update()
            .where(managers.c.owner == owner)
            .values(heartbeat_at=dt_to_us(at), running=running)
        )

        async def work(conn: AsyncConnection) -> bool:
            result = await conn.execute(statement)
            return bool(result.rowcount == 1)

        return await self._transact(work, write=True)

    async def unregister_manager(self, owner: str) -> None:
        """Remove the manager's row (see `ManagerPresence`)."""
        managers = self._tables.managers

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(managers.delete().where(managers.c.owner == owner))

        await self._transact(work, write=True)

    async def list_managers(self) -> list[ManagerInfo]:
        """Every registered manager, by owner (see `ManagerPresence`)."""
        managers = self._tables.managers
        query = sa.select(managers).order_by(managers.c.owner)

        async def work(conn: AsyncConnection) -> list[ManagerInfo]:
            return [_info(row) for row in await conn.execute(query)]

        return await self._transact(work, write=False)

    async def interrupt_dead_managers(self, now: datetime, by: str) -> list[InterruptedRun]:
        """Sweep managers past their own lease (see `ManagerPresence`)."""
        return await sweep_dead_managers(self, now, by)

    async def _interrupt_owner(
        self, info: ManagerInfo, now: datetime, by: str
    ) -> list[InterruptedRun]:
        managers, runs = self._tables.managers, self._tables.runs
        owner = info.owner
        messages = interrupted_changes(owner, info.heartbeat_at, by)
        active = runs.c.status.in_([_QUEUED, _RUNNING])
        mine = sa.and_(runs.c.owner == owner, active)
        started = runs.c.status == _RUNNING
        durable = runs.c.task.is_not(None)
        # Durable runs: QUEUED ones are unclaimed (left QUEUED for another manager), RUNNING
        # ones with requeue_on_interrupt go back to QUEUED, unclaimed, attempt + 1.
        released = sa.and_(durable, runs.c.status == _QUEUED)
        requeued = sa.and_(durable, started, runs.c.requeue_on_interrupt == sa.true())
        back = sa.or_(released, requeued)
        # MySQL/MariaDB assign left to right, later expressions seeing earlier results:
        # the status, which every condition reads, is set last.
        record = (
            runs.update()
            .where(mine)
            .ordered_values(
                (runs.c.owner, sa.case((back, sa.null()), else_=runs.c.owner)),
                (runs.c.attempt, sa.case((requeued, runs.c.attempt + 1), else_=runs.c.attempt)),
                (runs.c.started_at, sa.case((requeued, sa.null()), else_=runs.c.started_at)),
                (runs.c.heartbeat_at, sa.case((requeued, sa.null()), else_=runs.c.heartbeat_at)),
                (runs.c.finished_at, sa.case((back, runs.c.finished_at), else_=dt_to_us(now))),
                (runs.c.error_type, sa.case((released, runs.c.error_type), else_=INTERRUPTED)),
                (
                    runs.c.error_message,
                    sa.case(
                        (released, runs.c.error_message),
                        (started, messages[_FAILED]),
                        else_=messages[_CANCELLED],
                    ),
                ),
                (runs.c.status, sa.case((back, _QUEUED), (started, _FAILED), else_=_CANCELLED)),
            )
        )
        found = (
            sa.select(
                runs.c.run_id,
                runs.c.name,
                runs.c.status,
                runs.c.attempt,
                runs.c.run_group,
                runs.c.task,
                runs.c.requeue_on_interrupt,
            )
            .where(mine)
            .with_for_update()
        )

        async def work(conn: AsyncConnection) -> list[InterruptedRun]:
            deleted = await conn.execute(
                managers.delete().where(
                    managers.c.owner == owner,
                    managers.c.heartbeat_at == dt_to_us(info.heartbeat_at),
                )
            )
            if deleted.rowcount != 1:
                return []  # swept by another survivor, or it beat again
            rows = list(await conn.execute(found))
            if rows:
                await conn.execute(record)
            swept = []
            for run_id, name, status, attempt, group, task, requeue in rows:
                previous = RunStatus(status)
                if task is not None and previous is RunStatus.QUEUED:
                    continue  # unclaimed: nothing happened to it
                tries = int(attempt)
                if task is not None and requeue:
                    to, tries = RunStatus.QUEUED, tries + 1
                elif previous is RunStatus.RUNNING:
                    to = RunStatus.FAILED
                else:
                    to = RunStatus.CANCELLED
                swept.append(InterruptedRun(run_id, name, owner, previous, to, tries, group))
            return swept

        return await self._transact(work, write=True)

    async def cancelled_runs(self, owner: str, since: datetime) -> list[str]:
        """Runs of ``owner`` recorded CANCELLED since ``since`` (see `ManagerPresence`)."""
        runs = self._tables.runs
        query = sa.select(runs.c.run_id).where(
            runs.c.owner == owner,
            runs.c.status == _CANCELLED,
            runs.c.finished_at >= dt_to_us(since),
        )

        async def work(conn: AsyncConnection) -> list[str]:
            return list((await conn.execute(query)).scalars())

        return await self._transact(work, write=False)
