"""`BatchWriting` for `SQLRunRegistry`: a batch of writes in one transaction.

A batch of new runs only (the usual one under a flood of submissions) is inserted without
reading first. Any other batch locks the rows it touches (in run id order, so two batches
cannot deadlock each other), applies each write's compare-and-set in Python, and sends the
inserted and the updated rows as one statement each: a JSON array unpacked by the server on
PostgreSQL (which reads only the status and the owner, and writes only the columns the
batch changes), an executemany elsewhere (see `RowStatement`). Tags are rows of their own,
rewritten with the runs whose tags change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from runtrack._status import RunStatus
from runtrack.registry._refusals import candidates_of_writes
from runtrack.registry._sql_host import SQLHost
from runtrack.registry._sql_schema import (
    WRITABLE_COLUMNS,
    RowStatement,
    chunks,
    columns_from_changes,
    row_from_driver,
    row_from_stored,
    rows_json,
)
from runtrack.registry.base import MUTABLE_FIELDS, RunWrite

__all__ = ["SQLWrites"]


def _new_row(write: RunWrite, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The row an inserting write creates from its ``record`` (`RunWrite.record`)."""
    if record is None:
        raise ValueError(f"write_batch(): the write of {write.run_id!r} inserts no run")
    row = row_from_stored(record)
    row["run_id"] = write.run_id
    return row


class SQLWrites(SQLHost):
    """Batches of writes, and the run and tag rows they send (mixed into `SQLRunRegistry`)."""

    async def write_batch(self, writes: Sequence[RunWrite]) -> list[bool]:
        """Apply writes in order, all in one transaction (see `BatchWriting`).

        Returns:
            Whether each write applied.

        Raises:
            ValueError: a write changes a field that cannot change.
            RegistryUnavailableError: the database could not be reached; nothing applied.
        """
        if not writes:
            return []
        prepared: list[tuple[RunWrite, Mapping[str, Any]]] = []
        for write in writes:
            if not MUTABLE_FIELDS.issuperset(write.changes):
                unknown = sorted(set(write.changes) - MUTABLE_FIELDS)
                raise ValueError(f"write_batch() cannot change {', '.join(unknown)}")
            prepared.append((write, columns_from_changes(write.changes)))

        # Only new runs (the usual batch under a flood of submissions): insert them without
        # reading and locking first. A duplicate id fails the insert, and the transaction
        # is retried the general way, which finds the existing row.
        optimistic = all(write.inserts for write in writes) and len(
            {write.run_id for write in writes}
        ) == len(writes)

        async def work(conn: AsyncConnection) -> list[bool]:
            nonlocal optimistic
            if optimistic:
                optimistic = False  # a retry takes the general way
                await self._insert_rows(conn, {w.run_id: _new_row(w, w.record()) for w in writes})
                return [True] * len(writes)
            return await self._apply_batch(conn, prepared)

        return await self._transact(
            work, write=True, retry_integrity=True, values=lambda: candidates_of_writes(writes)
        )

    async def _apply_batch(
        self, conn: AsyncConnection, writes: Sequence[tuple[RunWrite, Mapping[str, Any]]]
    ) -> list[bool]:
        runs = self._tables.runs
        # The MySQL upsert needs whole rows; the other statements only what may change.
        columns = list(runs.c) if self._dialect == "mysql" else self._batch_columns
        if self._dialect == "postgresql" and (conn.dialect.server_version_info or ()) >= (12,):
            # A prepared "run_id IN ($1, ..., $500)" soon gets a generic plan, which on a
            # table without statistics yet is a sequential scan: plan each batch afresh.
            await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        current: dict[str, dict[str, Any]] = {}
        # PostgreSQL: the owners read by the lock, kept out of the rows (whose keys are the
        # columns written back); a row holds "owner" once a write sets it.
        owners: dict[str, str | None] = {}
        run_ids = sorted({write.run_id for write, _ in writes})
        # Locked in key order, so two batches cannot deadlock each other.
        if self._dialect == "postgresql":
            result = await conn.execute(self._tables.lock_any, {"ids": run_ids})
            for found in result.mappings():
                locked = dict(found)
                owners[locked["run_id"]] = locked.pop("owner")
                current[locked["run_id"]] = locked
        else:
            for chunk in chunks(run_ids):
                sql = self._lock_sql(conn, columns, len(chunk))
                result = await conn.exec_driver_sql(sql, tuple(chunk))
                # Straight from the driver: JSON columns arrive as text.
                current.update((row["run_id"], row_from_driver(row)) for row in result.mappings())
        inserted: dict[str, dict[str, Any]] = {}
        updated: dict[str, dict[str, Any]] = {}
        retagged: set[str] = set()
        applied: list[bool] = []
        for write, changes in writes:
            row = current.get(write.run_id)
            record = write.record()
            if record is not None and row is None:
                row = current[write.run_id] = inserted[write.run_id] = _new_row(write, record)
                applied.append(True)
                continue
            if (
                row is None
                or (write.to is None and record is not None)  # a duplicate id
                or (write.to is not None and RunStatus(row["status"]) not in write.expect)
                or (
                    write.to is not None
                    and write.owner is not None
                    and row.get("owner", owners.get(write.run_id)) != write.owner
                )
            ):
                applied.append(False)
                continue
            if write.to is not None:
                row["status"] = write.to.value
            row.update(changes)
            if write.run_id not in inserted:
                updated[write.run_id] = row
                if "tags" in changes:
                    retagged.add(write.run_id)
            applied.append(True)
        if inserted:
            await self._insert_rows(conn, inserted)
        if updated:
            await self._update_rows(conn, list(updated.values()))
        if retagged:
            await self._replace_tags(conn, {i: updated[i]["tags"] for i in sorted(retagged)})
        return applied

    async def _insert_rows(self, conn: AsyncConnection, rows: Mapping[str, dict[str, Any]]) -> None:
        """Insert new runs (and their tags), keyed by run id."""
        if self._dialect == "postgresql":
            payload = rows_json(list(rows.values()))
            await conn.execute(self._tables.insert_json, {"rows": payload})
        else:
            await self._execute_rows(conn, self._tables.insert_runs, rows.values())
        await self._insert_tags(conn, {run_id: row["tags"] for run_id, row in rows.items()})

    async def _update_rows(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        """Write the changed columns of existing, locked rows (see `_Tables`).

        On PostgreSQL each row holds its id, its status and the columns the batch changes
        (the lock read no others): one statement per set of columns changed.
        """
        t = self._tables
        if self._dialect == "postgresql":
            shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in rows:
                shapes.setdefault(tuple(sorted(row.keys() - {"run_id"})), []).append(row)
            for columns, same in shapes.items():
                await conn.execute(t.update_json(columns), {"rows": rows_json(same)})
        elif self._dialect == "mysql":
            await self._execute_rows(conn, t.upsert_mysql, rows)
        else:
            await self._execute_rows(conn, t.update_many, rows, WRITABLE_COLUMNS)

    def _lock_sql(self, conn: AsyncConnection, columns: list[sa.Column[Any]], count: int) -> str:
        """``SELECT columns ... WHERE run_id IN (<count> placeholders) ... FOR UPDATE``.

        Compiled once per count and sent to the driver as it is: SQLAlchemy would otherwise
        expand the IN list of every batch anew.
        """
        sql = self._lock_statements.get(count)
        if sql is None:
            runs = self._tables.runs
            ids: sa.BindParameter[list[str]] = sa.bindparam(
                "ids", value=[""] * count, expanding=True
            )
            statement = (
                sa.select(*columns)
                .where(runs.c.run_id.in_(ids))
                .order_by(runs.c.run_id)
                .with_for_update()
            )
            compiled = statement.compile(
                dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
            )
            sql = self._lock_statements[count] = str(compiled)
        return sql

    async def _execute_rows(
        self,
        conn: AsyncConnection,
        statement: sa.ClauseElement,
        rows: Iterable[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
    ) -> None:
        """Send ``rows`` through ``statement`` as one executemany (see `RowStatement`)."""
        compiled = self._row_statements.get(statement)
        if compiled is None:
            compiled = RowStatement(statement, conn.dialect, columns)
            self._row_statements[statement] = compiled
        await conn.exec_driver_sql(compiled.sql, compiled.params(rows))

    async def _insert_tags(
        self, conn: AsyncConnection, tags: Mapping[str, Mapping[str, str]]
    ) -> None:
        rows = [
            {"run_id": run_id, "key": key, "value": value}
            for run_id, pairs in tags.items()
            for key, value in pairs.items()
        ]
        if not rows:
            return
        if self._dialect == "postgresql":
            await conn.execute(self._tables.tags.insert(), rows)
        else:
            await self._execute_rows(conn, self._tables.insert_tags, rows)

    async def _replace_tags(
        self, conn: AsyncConnection, tags: Mapping[str, Mapping[str, str]]
    ) -> None:
        tag_rows = self._tables.tags
        for chunk in chunks(list(tags)):
            await conn.execute(tag_rows.delete().where(tag_rows.c.run_id.in_(chunk)))
        await self._insert_tags(conn, tags)
