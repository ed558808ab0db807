"""`IdempotentAdding` for `SQLRunRegistry`: the ``{prefix}idempotency`` table.

One row per key: the key (primary key) and the run that holds it (a foreign key: deleting
the run, as ``cleanup_old_runs`` does, deletes the row). `add_run_once` is one
transaction: insert the run, then the key's row with "insert unless it exists" (which
waits for a concurrent transaction inserting the same key). If the row was there, read
the run it names: if that run still holds the key, delete the new run and return that
one; else move the row to the new run with a compare-and-set on the old run id.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from runtrack._clock import dt_to_us, now_us
from runtrack._exceptions import DuplicateRunError
from runtrack._models import MAX_ID_LENGTH, Run
from runtrack.registry._idempotency import check_once_args, key_holds
from runtrack.registry._refusals import candidates_of_run
from runtrack.registry._sql_host import SQLHost

if TYPE_CHECKING:
    from runtrack.registry._sql_schema import Tables

__all__ = ["SQLIdempotency", "add_idempotency_table"]

#: Takeovers of a key tried before the last try, which raises what it meets.
_ATTEMPTS: Final = 5


def add_idempotency_table(tables: Tables, prefix: str) -> None:
    """Add the idempotency key table to ``tables``."""
    options: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
    tables.idempotency = sa.Table(
        f"{prefix}idempotency",
        tables.metadata,
        sa.Column("key", sa.String(MAX_ID_LENGTH), primary_key=True),
        sa.Column(
            "run_id",
            sa.String(MAX_ID_LENGTH),
            sa.ForeignKey(tables.runs.c.run_id, ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        **options,
    )


class SQLIdempotency(SQLHost):
    """Idempotent inserts of a SQL registry (mixed into `SQLRunRegistry`)."""

    async def add_run_once(self, run: Run, *, ttl: timedelta) -> tuple[Run, bool]:
        """Insert ``run`` unless its idempotency key is held (see `IdempotentAdding`)."""
        from runtrack.registry._sql_schema import row_from_run, run_from_row  # noqa: PLC0415 - a cycle

        key, window = check_once_args(run, ttl)
        t = self._tables
        keys = t.idempotency
        row = row_from_run(run)
        claim = _insert_ignore(keys, self._dialect).values(key=key, run_id=run.run_id)
        # Locking reads: they see the latest committed rows (MySQL's plain reads would
        # see the transaction's snapshot, older than the insert this one waited for).
        holder_of = sa.select(keys.c.run_id).where(keys.c["key"] == key).with_for_update(read=True)

        async def work(conn: AsyncConnection) -> tuple[Run, bool]:
            if await self._select_run(conn, run.run_id) is not None:
                raise DuplicateRunError(run.run_id)
            await conn.execute(t.runs.insert(), row)
            await self._insert_tags(conn, {run.run_id: row["tags"]})
            # Waits for a concurrent transaction inserting the same key, then does nothing.
            if (await conn.execute(claim)).rowcount == 1:
                return run, True
            holder_id = await conn.scalar(holder_of)
            holder = None
            if holder_id is not None:
                found = await conn.execute(
                    sa.select(t.runs).where(t.runs.c.run_id == holder_id).with_for_update(read=True)
                )
                holder_row = found.mappings().first()
                holder = None if holder_row is None else run_from_row(holder_row)
            if holder is not None and key_holds(
                holder.status,
                None if holder.finished_at is None else dt_to_us(holder.finished_at),
                dt_to_us(holder.created_at),
                now_us(),
                window,
            ):
                await conn.execute(t.runs.delete().where(t.runs.c.run_id == run.run_id))
                return holder, False
            # The holder finished over ttl ago (or is gone): take the key over, unless
            # another transaction took it first (then look again).
            taken = await conn.execute(
                keys.update()
                .where(keys.c["key"] == key, keys.c.run_id == holder_id)
                .values(run_id=run.run_id)
            )
            if taken.rowcount != 1:
                raise _KeyMoved
            return run, True

        for _ in range(_ATTEMPTS - 1):
            try:
                return await self._transact(
                    work, write=True, retry_integrity=True, values=lambda: candidates_of_run(run)
                )
            except _KeyMoved:
                continue
        return await self._transact(
            work, write=True, retry_integrity=True, values=lambda: candidates_of_run(run)
        )


class _KeyMoved(Exception):
    """The key's holder changed under a takeover: the transaction is rolled back and redone."""


def _insert_ignore(table: sa.Table, dialect: str) -> sa.Insert:
    """``INSERT`` that does nothing when the primary key exists, in ``dialect``'s words."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "mysql":
        return mysql.insert(table).prefix_with("IGNORE")
    return sqlite.insert(table).on_conflict_do_nothing()
