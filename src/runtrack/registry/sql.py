"""`SQLRunRegistry`: runs kept in SQLite, PostgreSQL or MariaDB/MySQL (SQLAlchemy async Core).

Needs the ``sql`` extra (``pip install 'runtrack[sql]'``). The tables, all named with the
registry's ``table_prefix``::

    {prefix}runs     one row per run; timestamps as integer microseconds since the epoch
    {prefix}tags     (run_id, key, value): one row per tag, indexed for list_runs(tags=...)
    {prefix}output   (run_id, seq, stream, text, at): output chunks, seq from 1 per run
    {prefix}schema   the schema version (SCHEMA_VERSION)
    {prefix}managers one row per manager sharing the registry (see ``_sql_managers``)

They are created on first use, and creating them from two processes at once is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import StaticPool

from runtrack._clock import now_us, us_to_dt
from runtrack._exceptions import (
    DuplicateRunError,
    RegistryConfigError,
    RegistryUnavailableError,
    RunNotFoundError,
)
from runtrack._logging import get_logger
from runtrack._models import OutputChunk, Run
from runtrack._status import TERMINAL, RunStatus, check_transition, normalize_statuses
from runtrack.registry._refusals import (
    Candidates,
    candidates_of_changes,
    candidates_of_output,
    candidates_of_run,
    candidates_of_writes,
    oversized,
    refused,
)
from runtrack.registry._sql_claims import SQLClaims
from runtrack.registry._sql_engine import (
    SQLITE_BEGIN_OPTION,
    Failure,
    classify,
    config_problem,
    configure_sqlite,
    create_engine,
    is_conflict,
    lost_connection,
    safe_url,
)
from runtrack.registry._sql_managers import SQLManagers
from runtrack.registry._sql_schema import (
    SCHEMA_VERSION,
    WRITABLE_COLUMNS,
    RowStatement,
    Tables,
    chunks,
    columns_from_changes,
    row_from_driver,
    row_from_run,
    row_from_stored,
    rows_json,
    run_from_row,
    status_values,
    upgrade,
)
from runtrack.registry.base import (
    MUTABLE_FIELDS,
    OutputItem,
    RunWrite,
    StatusFilter,
    check_keep_from_seq,
    validate_changes,
    validate_cleanup_args,
    validate_list_args,
    validate_output,
)

__all__ = ["DEFAULT_TABLE_PREFIX", "SCHEMA_VERSION", "SQLRunRegistry"]

#: The prefix of every table name unless ``table_prefix`` says otherwise.
DEFAULT_TABLE_PREFIX: Final = "runtrack_"

_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_]{0,32}")
#: Attempts of one transaction that lost a deadlock or an insert race.
_ATTEMPTS: Final = 5
#: How many arrays or objects MariaDB's JSON check lets nest.
_MYSQL_JSON_DEPTH: Final = 31

_T = TypeVar("_T")

_log = get_logger()


def _new_row(write: RunWrite, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The row an inserting write creates from its ``record`` (`RunWrite.record`)."""
    if record is None:
        raise ValueError(f"write_batch(): the write of {write.run_id!r} inserts no run")
    row = row_from_stored(record)
    row["run_id"] = write.run_id
    return row


class SQLRunRegistry(SQLManagers, SQLClaims):
    """A `RunRegistry` in a SQL database: SQLite, PostgreSQL or MariaDB/MySQL.

    Every replica of a service that points at the same database (and ``table_prefix``)
    sees the same runs. Status changes are atomic conditional ``UPDATE`` statements, so
    two processes racing on one run cannot both win. The tables are created on first use.

    SQLite runs in WAL mode with a busy timeout, and its write transactions start with
    ``BEGIN IMMEDIATE`` so that writers from several processes serialise cleanly. An engine
    you pass for SQLite is configured the same way.

    Args:
        url_or_engine: A database URL (``sqlite+aiosqlite:///runs.db``,
            ``postgresql+asyncpg://user:pass@host/db``, ``mysql+asyncmy://user:pass@host/db``)
            or an `AsyncEngine`. An engine built from a URL is disposed by `aclose`; an engine
            you pass stays yours to dispose.
        table_prefix: Prefix of the table and index names: letters, digits and underscores,
            at most 32 characters. Registries with different prefixes share nothing.

    Raises:
        ValueError: a malformed URL or ``table_prefix``.
        TypeError: ``url_or_engine`` is neither a URL nor an `AsyncEngine`.

    Example:
        >>> import asyncio, tempfile
        >>> from runtrack import Run
        >>> from runtrack.registry.sql import SQLRunRegistry
        >>> async def main(path: str) -> str:
        ...     async with SQLRunRegistry(f"sqlite+aiosqlite:///{path}/runs.db") as registry:
        ...         await registry.add_run(Run(run_id="r1", name="demo"))
        ...         run = await registry.get_run("r1")
        ...         return run.status.value
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     asyncio.run(main(tmp))
        'queued'
    """

    def __init__(
        self, url_or_engine: str | URL | AsyncEngine, *, table_prefix: str = DEFAULT_TABLE_PREFIX
    ) -> None:
        prefix: object = table_prefix  # callers may not be type-checked
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(
                f"table_prefix must be at most 32 letters, digits or underscores, "
                f"got {table_prefix!r}"
            )
        if isinstance(url_or_engine, AsyncEngine):
            engine = url_or_engine
            self._owns_engine = False
        elif isinstance(url_or_engine, str | URL):
            engine = create_engine(url_or_engine)
            self._owns_engine = True
        else:
            raise TypeError(
                "SQLRunRegistry() takes a database URL or an AsyncEngine, "
                f"got {type(url_or_engine).__name__}"
            )
        self._engine = engine
        self._prefix = table_prefix
        self._tables = Tables(table_prefix)
        dialect = engine.dialect.name
        self._dialect = dialect
        self._batch_columns = [self._tables.runs.c[n] for n in ("run_id", *WRITABLE_COLUMNS)]
        self._backend = engine.url.get_backend_name()
        self._sqlite = dialect == "sqlite"
        # Every read is one SELECT, so it needs no transaction of its own: on PostgreSQL
        # and SQLite reads run in autocommit mode and save the BEGIN/COMMIT round trips.
        # Writes on SQLite begin with BEGIN IMMEDIATE. (Same engine and pool, other options.)
        self._read_engine = engine
        self._write_engine = engine
        if dialect == "postgresql":
            self._read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        elif dialect == "mysql":
            # InnoDB's default REPEATABLE READ takes gap locks around the ids a batch locks
            # that do not exist yet, and two batches inserting new runs then deadlock.
            # Every write here locks the rows it reads (FOR UPDATE), so READ COMMITTED
            # loses nothing, and a lost insert race still fails on the primary key.
            self._write_engine = engine.execution_options(isolation_level="READ COMMITTED")
        # SQLite takes one writer at a time anyway: queueing writers here keeps them off
        # its busy-wait loop. A :memory: database is one shared connection, so every
        # statement must take turns.
        self._write_lock: asyncio.Lock | None = None
        self._serialise_reads = False
        if self._sqlite:
            configure_sqlite(engine)
            self._read_engine = engine.execution_options(**{SQLITE_BEGIN_OPTION: ""})
            self._write_engine = engine.execution_options(
                **{SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"}
            )
            self._write_lock = asyncio.Lock()
            self._serialise_reads = isinstance(engine.sync_engine.pool, StaticPool)
        self._schema_lock = asyncio.Lock()
        self._schema_ready = False
        self._row_statements: dict[sa.ClauseElement, RowStatement] = {}
        self._lock_statements: dict[int, str] = {}

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine the registry uses."""
        return self._engine

    @property
    def batches_in_flight(self) -> int:
        """How many `write_batch` calls a manager may run at once (see `BatchWriting`).

        Two on PostgreSQL and MariaDB/MySQL: one is prepared while the server applies the
        other. One on SQLite, which takes one writer at a time.
        """
        return 1 if self._sqlite else 2

    @property
    def backend(self) -> str:
        """The database's name as errors and logs give it: ``sqlite``, ``postgresql``, ``mysql``."""
        return self._backend

    @property
    def table_prefix(self) -> str:
        """The prefix of the registry's table names."""
        return self._prefix

    def __repr__(self) -> str:
        return f"<SQLRunRegistry {safe_url(self._engine.url)} prefix={self._prefix!r}>"

    # -- RunRegistry ----------------------------------------------------------------------

    async def add_run(self, run: Run) -> None:
        """Insert a new run.

        Raises:
            TypeError: ``run`` is not a `Run`.
            DuplicateRunError: a run with this id exists.
            RegistryUnavailableError: the database could not be reached.
        """
        if not isinstance(run, Run):
            raise TypeError(f"add_run() takes a runtrack.Run, got {type(run).__name__}")
        row = row_from_run(run)
        t = self._tables

        async def work(conn: AsyncConnection) -> None:
            try:
                await conn.execute(t.runs.insert(), row)
            except sa.exc.IntegrityError as exc:
                raise DuplicateRunError(run.run_id) from exc
            await self._insert_tags(conn, {run.run_id: row["tags"]})

        await self._transact(work, write=True, values=lambda: candidates_of_run(run))

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
        run_ids = sorted({write.run_id for write, _ in writes})
        # Locked in key order, so two batches cannot deadlock each other.
        if self._dialect == "postgresql":
            result = await conn.execute(self._tables.lock_any, {"ids": run_ids})
            current.update((row["run_id"], dict(row)) for row in result.mappings())
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
        """Write the changed columns of existing, locked rows (see `_Tables`)."""
        t = self._tables
        if self._dialect == "postgresql":
            await conn.execute(t.update_json, {"rows": rows_json(rows)})
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

    async def get_statuses(self, run_ids: Sequence[str]) -> dict[str, RunStatus]:
        """The status of each existing run in ``run_ids`` (see `StatusReading`).

        Raises:
            RegistryUnavailableError: the database could not be reached.
        """
        runs = self._tables.runs
        wanted = sorted(set(run_ids))

        async def work(conn: AsyncConnection) -> dict[str, RunStatus]:
            found: dict[str, RunStatus] = {}
            for chunk in chunks(wanted):
                result = await conn.execute(
                    sa.select(runs.c.run_id, runs.c.status).where(runs.c.run_id.in_(chunk))
                )
                found.update((run_id, RunStatus(status)) for run_id, status in result)
            return found

        return await self._transact(work, write=False)

    async def get_run(self, run_id: str) -> Run | None:
        """Return the run with this id, or None.

        Raises:
            RegistryUnavailableError: the database could not be reached.
        """

        async def work(conn: AsyncConnection) -> Run | None:
            return await self._select_run(conn, run_id)

        return await self._transact(work, write=False)

    async def transition(
        self,
        run_id: str,
        to: RunStatus | str,
        /,
        *,
        expect: StatusFilter = None,
        **changes: Any,
    ) -> Run | None:
        """Move a run to ``to`` if its status is in ``expect`` (see `RunRegistry`).

        One conditional ``UPDATE ... WHERE run_id = ? AND status IN (...)``: atomic across
        processes.

        Raises:
            ValueError: an illegal transition, or a field that cannot change.
            RegistryUnavailableError: the database could not be reached.
        """
        target, expected = check_transition(to, expect)
        columns = columns_from_changes(validate_changes(changes))
        if not expected:
            return None
        runs = self._tables.runs
        statement = (
            runs.update()
            .where(runs.c.run_id == run_id, runs.c.status.in_(status_values(expected)))
            .values(status=target.value, **columns)
        )

        async def work(conn: AsyncConnection) -> Run | None:
            result = await conn.execute(statement)
            if result.rowcount != 1:
                return None
            if "tags" in columns:
                await self._replace_tags(conn, {run_id: columns["tags"]})
            return await self._select_run(conn, run_id)

        return await self._transact(
            work, write=True, values=lambda: candidates_of_changes(run_id, columns)
        )

    async def update_run(self, run_id: str, /, **changes: Any) -> Run:
        """Set non-status fields and return the updated run (see `RunRegistry`).

        Raises:
            RunNotFoundError: no such run.
            ValueError: a field that cannot change (``status``: use `transition`).
            RegistryUnavailableError: the database could not be reached.
        """
        columns = columns_from_changes(validate_changes(changes))
        runs = self._tables.runs

        async def work(conn: AsyncConnection) -> Run:
            if columns:
                await conn.execute(runs.update().where(runs.c.run_id == run_id).values(columns))
            run = await self._select_run(conn, run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            if "tags" in columns:
                await self._replace_tags(conn, {run_id: columns["tags"]})
            return run

        return await self._transact(
            work, write=bool(columns), values=lambda: candidates_of_changes(run_id, columns)
        )

    async def list_runs(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        group: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
        task: str | None = None,
        dead: bool | None = None,
    ) -> list[Run]:
        """Runs matching every filter, newest first (see `RunRegistry`).

        Raises:
            ValueError: an unknown status, or ``limit``/``offset`` out of range.
            RegistryUnavailableError: the database could not be reached.
        """
        validate_list_args(limit, offset)
        statuses = normalize_statuses(status)
        wanted_tags = dict(tags or {})
        if statuses is not None and not statuses:
            return []
        if not all(isinstance(v, str) for pair in wanted_tags.items() for v in pair):
            return []  # tags are str -> str: nothing can match
        runs, tag_rows = self._tables.runs, self._tables.tags
        query = sa.select(runs)
        if statuses is not None:
            query = query.where(runs.c.status.in_(status_values(statuses)))
        if name is not None:
            query = query.where(runs.c.name == name)
        if group is not None:
            query = query.where(runs.c.run_group == group)
        if task is not None:
            query = query.where(runs.c.task == task)
        if dead is not None:
            query = query.where(runs.c.dead == sa.true() if dead else runs.c.dead == sa.false())
        for key, value in wanted_tags.items():
            query = query.where(
                sa.exists().where(
                    tag_rows.c.run_id == runs.c.run_id,
                    tag_rows.c["key"] == key,
                    tag_rows.c["value"] == value,
                )
            )
        query = (
            query.order_by(runs.c.created_at.desc(), runs.c.run_id.desc())
            .limit(limit)
            .offset(offset)
        )

        async def work(conn: AsyncConnection) -> list[Run]:
            result = await conn.execute(query)
            return [run_from_row(row) for row in result.mappings()]

        return await self._transact(work, write=False)

    async def count_runs(self, *, name: str | None = None) -> dict[RunStatus, int]:
        """How many runs are in each status (see `RunRegistry`).

        Raises:
            RegistryUnavailableError: the database could not be reached.
        """
        runs = self._tables.runs
        query = sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)
        if name is not None:
            query = query.where(runs.c.name == name)

        async def work(conn: AsyncConnection) -> dict[RunStatus, int]:
            counts = dict.fromkeys(RunStatus, 0)
            for status, count in await conn.execute(query):
                counts[RunStatus(status)] = int(count)
            return counts

        return await self._transact(work, write=False)

    async def append_output(self, run_id: str, chunks: Iterable[OutputItem]) -> list[OutputChunk]:
        """Append chunks, numbered from 1 per run (see `RunRegistry`).

        Raises:
            TypeError: a chunk is neither a pair of strings nor an `OutputChunk`.
            ValueError: a stream name is empty or too long, or the database refuses the text.
            RunNotFoundError: no such run.
            RegistryUnavailableError: the database could not be reached.
        """
        items = validate_output(chunks)
        runs, output = self._tables.runs, self._tables.output

        async def work(conn: AsyncConnection) -> list[OutputChunk]:
            # Locking the run row serialises appenders of one run, so seqs never collide.
            found = await conn.execute(
                sa.select(runs.c.run_id).where(runs.c.run_id == run_id).with_for_update()
            )
            if found.first() is None:
                raise RunNotFoundError(run_id)
            if not items:
                return []
            last = await conn.scalar(
                sa.select(sa.func.max(output.c.seq)).where(output.c.run_id == run_id)
            )
            start = int(last or 0) + 1
            at = now_us()
            rows = [
                {"run_id": run_id, "seq": seq, "stream": stream, "text": text, "at": at}
                for seq, (stream, text) in enumerate(items, start=start)
            ]
            await conn.execute(output.insert(), rows)
            when = us_to_dt(at)
            return [
                OutputChunk(seq=row["seq"], stream=row["stream"], text=row["text"], at=when)
                for row in rows
            ]

        return await self._transact(
            work, write=True, values=lambda: candidates_of_output(run_id, items)
        )

    async def get_output(
        self, run_id: str, *, since: int = 0, limit: int | None = None
    ) -> list[OutputChunk]:
        """Chunks with ``seq > since``, oldest first (see `RunRegistry`).

        Raises:
            ValueError: ``since`` below 0 or ``limit`` below 1.
            RegistryUnavailableError: the database could not be reached.
        """
        if since < 0:
            raise ValueError(f"since must be >= 0, got {since!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit!r}")
        output = self._tables.output
        query = (
            sa.select(output.c.seq, output.c.stream, output.c.text, output.c.at)
            .where(output.c.run_id == run_id, output.c.seq > since)
            .order_by(output.c.seq)
        )
        if limit is not None:
            query = query.limit(limit)

        async def work(conn: AsyncConnection) -> list[OutputChunk]:
            return [
                OutputChunk(seq=seq, stream=stream, text=text, at=us_to_dt(at))
                for seq, stream, text, at in await conn.execute(query)
            ]

        return await self._transact(work, write=False)

    async def trim_output(self, run_id: str, *, keep_from_seq: int) -> int:
        """Delete the chunks with ``seq < keep_from_seq`` but the newest (see `OutputTrimming`).

        Raises:
            ValueError: ``keep_from_seq`` is not an int >= 1.
            RegistryUnavailableError: the database could not be reached.
        """
        check_keep_from_seq(keep_from_seq)
        output = self._tables.output

        async def work(conn: AsyncConnection) -> int:
            # Appends take seq max + 1: the newest chunk stays, so a seq is never reused.
            # An append landing meanwhile only adds chunks above the bound.
            last = await conn.scalar(
                sa.select(sa.func.max(output.c.seq)).where(output.c.run_id == run_id)
            )
            if last is None:
                return 0
            bound = min(keep_from_seq, int(last))
            result = await conn.execute(
                output.delete().where(output.c.run_id == run_id, output.c.seq < bound)
            )
            return max(int(result.rowcount), 0)

        return await self._transact(work, write=True)

    async def cleanup_old_runs(
        self,
        *,
        older_than: timedelta,
        statuses: StatusFilter = TERMINAL,
        keep: int = 0,
    ) -> int:
        """Delete finished runs, their tags and output, older than ``older_than``.

        A run's age counts from ``finished_at`` (``created_at`` if it has none). The newest
        ``keep`` runs among ``statuses`` stay whatever their age; runs that are not finished
        are never deleted.

        Returns:
            How many runs were deleted.

        Raises:
            TypeError: ``older_than`` is not a `timedelta`, or ``keep`` not an int.
            ValueError: ``older_than`` or ``keep`` negative, or an unknown status.
            RegistryUnavailableError: the database could not be reached.
        """
        cutoff, wanted = validate_cleanup_args(older_than, keep, statuses)
        if not wanted:
            return 0
        t = self._tables
        runs = t.runs
        age = sa.func.coalesce(runs.c.finished_at, runs.c.created_at)
        finished = runs.c.status.in_(status_values(wanted))

        async def work(conn: AsyncConnection) -> int:
            doomed = sa.and_(finished, age < cutoff)
            if keep:
                # The keep-th newest run: it and everything newer stays.
                edge = (
                    await conn.execute(
                        sa.select(age.label("age"), runs.c.run_id)
                        .where(finished)
                        .order_by(age.desc(), runs.c.run_id.desc())
                        .offset(keep - 1)
                        .limit(1)
                    )
                ).first()
                if edge is None:
                    return 0
                edge_age, edge_id = edge
                doomed = sa.and_(
                    doomed,
                    sa.or_(age < edge_age, sa.and_(age == edge_age, runs.c.run_id < edge_id)),
                )
            ids = list((await conn.execute(sa.select(runs.c.run_id).where(doomed))).scalars())
            deleted = 0
            for chunk in chunks(ids):
                await conn.execute(t.output.delete().where(t.output.c.run_id.in_(chunk)))
                await conn.execute(t.tags.delete().where(t.tags.c.run_id.in_(chunk)))
                result = await conn.execute(runs.delete().where(runs.c.run_id.in_(chunk)))
                deleted += result.rowcount
            return deleted

        return await self._transact(work, write=True)

    async def drop_schema(self) -> None:
        """Drop the registry's tables and every run in them (for tests and teardown).

        The next call that needs the tables creates them again.

        Raises:
            RegistryUnavailableError: the database could not be reached.
        """
        async with self._schema_lock:
            try:
                async with self._write_engine.begin() as conn:
                    await conn.run_sync(self._tables.metadata.drop_all, checkfirst=True)
            except Exception as exc:
                error = await self._error(exc, None)
                if error is exc:
                    raise
                raise error from exc
            self._schema_ready = False

    async def aclose(self) -> None:
        """Close the database connections if the registry built its engine. Safe twice."""
        if self._owns_engine:
            await self._engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- internals ------------------------------------------------------------------------

    async def _select_run(self, conn: AsyncConnection, run_id: str) -> Run | None:
        runs = self._tables.runs
        result = await conn.execute(sa.select(runs).where(runs.c.run_id == run_id))
        row = result.mappings().first()
        return None if row is None else run_from_row(row)

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

    async def _transact(
        self,
        work: Callable[[AsyncConnection], Awaitable[_T]],
        *,
        write: bool,
        retry_integrity: bool = False,
        values: Callable[[], Candidates] | None = None,
    ) -> _T:
        """Run ``work`` in one transaction; retry deadlocks; say what a failure means.

        ``retry_integrity`` retries a unique-key violation too: a batch that lost an insert
        race to another process sees the row the second time and takes its CAS path.
        ``values`` gives the values the write sends, searched only when the database
        refuses one of them.
        """
        await self._ensure_schema()
        engine = self._write_engine if write else self._read_engine
        serialise = self._write_lock is not None and (write or self._serialise_reads)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if serialise and self._write_lock is not None:
                        await stack.enter_async_context(self._write_lock)
                    conn = await stack.enter_async_context(engine.begin())
                    return await work(conn)
            except Exception as exc:
                if attempt < _ATTEMPTS and is_conflict(exc, integrity=retry_integrity):
                    await asyncio.sleep(random.uniform(0, 0.005 * attempt))
                    continue
                error = await self._error(exc, values)
                if error is exc:
                    raise
                raise error from exc

    async def _error(self, exc: Exception, values: Callable[[], Candidates] | None) -> Exception:
        """The error to raise for ``exc``: ``exc`` itself unless it means something known.

        - an outage: `RegistryUnavailableError`;
        - a refused login, a missing database or folder: `RegistryConfigError`;
        - a value the database refuses: `ValueError` naming the run and the field. MySQL
          and MariaDB drop the connection of a statement over ``max_allowed_packet``; a
          lost connection is such a refusal if the write's values exceed it.
        """
        kind = classify(exc, self._engine.url)
        if kind is Failure.OUTAGE:
            if values is not None and self._dialect == "mysql" and lost_connection(exc):
                too_big = await self._oversized(values)
                if too_big is not None:
                    return too_big
            return self._unavailable(exc)
        if kind is Failure.CONFIG:
            problem, fix = config_problem(exc, self._engine.url)
            return RegistryConfigError(self._backend, problem, fix)
        if kind is Failure.CONTENT:
            return refused(
                self._backend,
                None if values is None else values(),
                detail=self._detail(exc),
                nul=self._dialect == "postgresql",
                max_depth=_MYSQL_JSON_DEPTH if self._dialect == "mysql" else None,
            )
        return exc

    async def _oversized(self, values: Callable[[], Candidates]) -> ValueError | None:
        """A `ValueError` if a run's values exceed the server's ``max_allowed_packet``."""
        try:
            async with self._read_engine.connect() as conn:
                limit = await conn.scalar(sa.text("SELECT @@max_allowed_packet"))
        except Exception:  # still unreachable: the outage it looked like
            return None
        if not isinstance(limit, int):
            return None
        return oversized(self._backend, values(), limit, "max_allowed_packet")

    async def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_created():  # another task did it while we waited
                return
            try:
                await self._create_schema()
            except Exception as exc:
                error = await self._error(exc, None)
                if error is exc:
                    raise
                raise error from exc
            self._schema_ready = True

    def _schema_created(self) -> bool:
        return self._schema_ready

    async def _create_schema(self) -> None:
        t = self._tables
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self._write_engine.begin() as conn:
                    t.use_collation(conn.dialect)
                    await conn.run_sync(t.metadata.create_all, checkfirst=True)
                    # An older schema: its runs table lacks columns and indexes.
                    await conn.run_sync(upgrade, t)
                break
            except sa.exc.DBAPIError as exc:
                # Another process created a table between our check and our CREATE: the
                # next round's check sees it.
                kind = classify(exc, self._engine.url)
                if attempt == _ATTEMPTS or kind is Failure.CONFIG or exc.connection_invalidated:
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * attempt))
        try:
            async with self._write_engine.begin() as conn:
                stored = await conn.scalar(sa.select(sa.func.max(t.schema.c.version)))
                if stored is None or stored < SCHEMA_VERSION:
                    await conn.execute(
                        t.schema.insert().values(version=SCHEMA_VERSION, applied_at=now_us())
                    )
        except sa.exc.IntegrityError:
            stored = SCHEMA_VERSION  # another process recorded it first
        if stored is not None and stored > SCHEMA_VERSION:
            _log.warning(
                "sql_schema_newer",
                backend=self._backend,
                prefix=self._prefix,
                schema_version=stored,
                supported=SCHEMA_VERSION,
            )

    def _detail(self, exc: BaseException) -> str:
        """``exc`` in one short line, for an error message, without the password."""
        orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
        detail = f"{type(orig).__name__}: {orig}".strip().rstrip(":")
        password = self._engine.url.password
        if password:
            detail = detail.replace(str(password), "***")
        if len(detail) > 300:
            detail = detail[:297] + "..."
        return detail

    def _unavailable(self, exc: BaseException) -> RegistryUnavailableError:
        return RegistryUnavailableError(self._backend, self._detail(exc))
