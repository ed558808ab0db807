"""`TaskClaiming` for `SQLRunRegistry`: durable runs claimed with one short transaction.

- PostgreSQL: one ``WITH picked AS MATERIALIZED (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)
  UPDATE ... WHERE run_id = ANY(ARRAY(SELECT run_id FROM picked)) RETURNING *``:
  concurrent claimers skip each other's rows instead of waiting.
- MariaDB/MySQL (no ``UPDATE ... RETURNING``): ``SELECT ... FOR UPDATE SKIP LOCKED`` then
  one ``UPDATE`` of the ids read, in the same transaction.
- SQLite: ``UPDATE ... WHERE run_id IN (SELECT ... LIMIT n) RETURNING *``, in the
  ``BEGIN IMMEDIATE``
  transaction every write takes (writers are serialised by the database).

The ``{prefix}runs_claimable`` index serves the claim in its own order: on PostgreSQL and
SQLite a partial index of the unclaimed QUEUED runs on (task, priority DESC, created_at,
run_id), on MariaDB/MySQL (task, status, owner, priority DESC, created_at, run_id). A claim
of one task reads as many index entries as it takes runs.

A run whose ``not_before`` is later than now is skipped, now read from the database
server's clock (PostgreSQL ``now()``, MariaDB/MySQL ``UTC_TIMESTAMP(6)``), so replicas
whose clocks differ agree on when it is due; SQLite, whose replicas share one machine,
takes this process's clock.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from runtrack._clock import now_us
from runtrack._exceptions import DuplicateRunError
from runtrack._models import Run
from runtrack._status import RunStatus
from runtrack.registry._refusals import candidates_of_run
from runtrack.registry._sql_host import SQLHost
from runtrack.registry._sql_schema import QUEUED_LITERAL, chunks, row_from_run, run_from_row

__all__ = ["SQLClaims"]

_QUEUED: Final = QUEUED_LITERAL
_RUNNING: Final = RunStatus.RUNNING.value
_FLOATS: Final = ("timeout", "progress")
_EPOCH_US: Final[sa.ColumnElement[str]] = sa.literal_column("'1970-01-01 00:00:00'")


def _now_us(dialect: str) -> sa.ColumnElement[Any]:
    """Now, in µs since the epoch, by the database's clock where it has one."""
    if dialect == "postgresql":
        return sa.cast(sa.extract("epoch", sa.func.now()) * 1_000_000, sa.BigInteger)
    if dialect == "mysql":
        unit: sa.ColumnElement[Any] = sa.literal_column("MICROSECOND")
        return sa.func.timestampdiff(unit, _EPOCH_US, sa.func.utc_timestamp(6))
    return sa.literal(now_us(), sa.BigInteger)


def _claimed_runs(rows: list[dict[str, Any]]) -> list[Run]:
    """The runs of claimed rows, best first (a claim's rows come back in no given order)."""
    rows.sort(key=lambda row: (-row["priority"], row["created_at"], row["run_id"]))
    for row in rows:
        for field in _FLOATS:  # JSON writes a whole float as an int
            if row[field] is not None:
                row[field] = float(row[field])
    return [run_from_row(row, trusted=True) for row in rows]


class SQLClaims(SQLHost):
    """Claiming durable runs in a SQL registry (mixed into `SQLRunRegistry`)."""

    async def add_runs(self, runs: Sequence[Run]) -> None:
        """Insert new runs with one multi-row statement, all or none (see `TaskClaiming`).

        Raises:
            TypeError: an item is not a `Run`.
            DuplicateRunError: one of the ids exists (or is given twice).
            RegistryUnavailableError: the database could not be reached.
        """
        rows: dict[str, dict[str, Any]] = {}
        for run in runs:
            if not isinstance(run, Run):
                raise TypeError(f"add_runs() takes Runs, got {type(run).__name__}")
            if run.run_id in rows:
                raise DuplicateRunError(run.run_id)
            rows[run.run_id] = row_from_run(run)
        if not rows:
            return
        runs_table = self._tables.runs

        async def work(conn: AsyncConnection) -> None:
            try:
                await self._insert_rows(conn, rows)
            except sa.exc.IntegrityError as exc:
                raise DuplicateRunError(next(iter(rows))) from exc

        def values() -> Iterator[tuple[str, str, object]]:
            for run in runs:
                yield from candidates_of_run(run)

        try:
            await self._transact(work, write=True, values=values)
        except DuplicateRunError as exc:
            ids = list(rows)

            async def existing(conn: AsyncConnection) -> str | None:
                for chunk in chunks(ids):
                    found = await conn.scalar(
                        sa.select(runs_table.c.run_id)
                        .where(runs_table.c.run_id.in_(chunk))
                        .limit(1)
                    )
                    if found is not None:
                        return str(found)
                return None

            found = await self._transact(existing, write=False)
            raise DuplicateRunError(found or exc.run_id) from exc.__cause__

    async def claim_runs(self, owner: str, tasks: Collection[str], limit: int) -> list[Run]:
        """Take up to ``limit`` due, unclaimed QUEUED runs of ``tasks`` (see `TaskClaiming`).

        Raises:
            RegistryUnavailableError: the database could not be reached.
        """
        names = sorted(set(tasks))
        if limit < 1 or not names:
            return []
        runs = self._tables.runs
        due = sa.or_(runs.c.not_before.is_(None), runs.c.not_before <= _now_us(self._dialect))
        unclaimed = sa.and_(
            runs.c.task.in_(names), runs.c.status == _QUEUED, runs.c.owner.is_(None), due
        )
        order = (runs.c.priority.desc(), runs.c.created_at, runs.c.run_id)
        mysql = self._dialect == "mysql"
        started = now_us()
        # Recorded RUNNING by the claim itself: its start then costs no write of its own.
        # Never started before it was due (due by the database's clock, started by ours).
        greatest = sa.func.max if self._dialect == "sqlite" else sa.func.greatest
        since = greatest(sa.literal(started, sa.BigInteger), sa.func.coalesce(runs.c.not_before, 0))
        claimed = {"owner": owner, "status": _RUNNING, "started_at": since, "heartbeat_at": since}

        async def work(conn: AsyncConnection) -> list[Run]:
            if mysql:
                found = sa.select(runs).where(unclaimed).order_by(*order).limit(limit)
                locked = await conn.execute(found.with_for_update(skip_locked=True))
                rows = [dict(row) for row in locked.mappings()]
                if rows:
                    await conn.execute(
                        runs.update()
                        .where(runs.c.run_id.in_([row["run_id"] for row in rows]))
                        .values(claimed)
                    )
                for row in rows:
                    at = max(started, row["not_before"] or 0)
                    row.update(owner=owner, status=_RUNNING, started_at=at, heartbeat_at=at)
            else:
                picked = sa.select(runs.c.run_id).where(unclaimed).order_by(*order).limit(limit)
                if self._dialect == "postgresql":
                    # A materialized CTE: the locking SELECT runs once (an IN (subquery)
                    # may be planned as a join that takes more than ``limit`` rows).
                    chosen = (
                        picked.with_for_update(skip_locked=True)
                        .cte("picked")
                        .prefix_with("MATERIALIZED")
                    )
                    # The claimed rows found by key, as an array: joined to the CTE, they
                    # were hashed against a scan of the whole table, up to ~100k rows.
                    ids = sa.func.array(sa.select(chosen.c.run_id).scalar_subquery())
                    claim = (
                        runs.update()
                        .where(runs.c.run_id == sa.any_(ids))
                        .values(claimed)
                        .returning(*runs.c)
                        .cte("claimed")
                    )
                    # The rows as one JSON array, parsed in one call rather than value by
                    # value by the driver and SQLAlchemy: a claim returns hundreds of rows.
                    agg = sa.func.json_agg(sa.literal_column(claim.name))
                    value = await conn.scalar(sa.select(agg).select_from(claim))
                    rows = json.loads(value) if isinstance(value, str) else list(value or ())
                    return _claimed_runs(rows)
                else:
                    # The write transaction holds the database: the rows picked are
                    # still unclaimed, so the UPDATE finds them by key (with the claim's
                    # terms repeated, SQLite walks the task's whole backlog instead).
                    statement = runs.update().where(runs.c.run_id.in_(picked))
                result = await conn.execute(statement.values(claimed).returning(*runs.c))
                rows = [dict(row) for row in result.mappings()]
            return _claimed_runs(rows)

        if self._dialect == "sqlite":
            # A write transaction locks the whole database: look first, in a read one.
            probe = sa.select(runs.c.run_id).where(unclaimed).order_by(*order).limit(1)

            async def any_waiting(conn: AsyncConnection) -> bool:
                return await conn.scalar(probe) is not None

            if not await self._transact(any_waiting, write=False):
                return []
        return await self._transact(work, write=True)

    async def release_runs(self, owner: str, run_ids: Sequence[str]) -> int:
        """Unclaim those of ``run_ids`` still claimed by ``owner`` (see `TaskClaiming`).

        Raises:
            RegistryUnavailableError: the database could not be reached.
        """
        ids = sorted(set(run_ids))
        if not ids:
            return 0
        runs = self._tables.runs

        def unstarted(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
            # A run claimed RUNNING never started here: it goes back as it was queued.
            return sa.case((runs.c.status == _RUNNING, sa.null()), else_=column)

        async def work(conn: AsyncConnection) -> int:
            released = 0
            for chunk in chunks(ids):
                # MariaDB assigns left to right: the times are set while the status is
                # still the claimed one.
                result = await conn.execute(
                    runs.update()
                    .where(
                        runs.c.run_id.in_(chunk),
                        runs.c.owner == owner,
                        runs.c.status.in_((RunStatus.QUEUED.value, _RUNNING)),
                    )
                    .ordered_values(
                        (runs.c.started_at, unstarted(runs.c.started_at)),
                        (runs.c.heartbeat_at, unstarted(runs.c.heartbeat_at)),
                        (runs.c.owner, None),
                        (runs.c.status, RunStatus.QUEUED.value),
                    )
                )
                released += int(result.rowcount)
            return released

        return await self._transact(work, write=True)
