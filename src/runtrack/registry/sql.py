"""`SQLRunRegistry`: runs kept in SQLite, PostgreSQL or MariaDB/MySQL (SQLAlchemy async Core).

Needs the ``sql`` extra (``pip install 'runtrack[sql]'``). The tables, all named with the
registry's ``table_prefix``::

    {prefix}runs     one row per run; timestamps as integer microseconds since the epoch
    {prefix}tags     (run_id, key, value): one row per tag, indexed for list_runs(tags=...)
    {prefix}output   (run_id, seq, stream, text, at): output chunks, seq from 1 per run
    {prefix}schema   the schema version (SCHEMA_VERSION)
    {prefix}managers one row per manager sharing the registry (see ``_sql_managers``)

They are created on first use, and creating them from two processes at once is safe.

This module holds the registry's setup and its single-run reads and writes; the rest is
mixed in, one concept a module, over the state declared in ``_sql_host``: batches
(``_sql_writes``), output (``_sql_output``), retention (``_sql_retention``), transactions
and errors (``_sql_transact``), schema setup (``_sql_setup``), managers, claims,
idempotency keys and notifications.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Self

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import StaticPool

from runtrack._exceptions import DuplicateRunError, RunNotFoundError
from runtrack._models import Run
from runtrack._status import RunStatus, check_transition, normalize_statuses
from runtrack.registry._notify_pg import SQLNotifying
from runtrack.registry._refusals import candidates_of_changes, candidates_of_run
from runtrack.registry._sql_claims import SQLClaims
from runtrack.registry._sql_engine import (
    SQLITE_BEGIN_OPTION,
    configure_sqlite,
    create_engine,
    safe_url,
)
from runtrack.registry._sql_idempotency import SQLIdempotency
from runtrack.registry._sql_managers import SQLManagers
from runtrack.registry._sql_output import SQLOutput
from runtrack.registry._sql_retention import SQLRetention
from runtrack.registry._sql_schema import (
    SCHEMA_VERSION,
    WRITABLE_COLUMNS,
    Tables,
    chunks,
    columns_from_changes,
    row_from_run,
    run_from_row,
    status_values,
)
from runtrack.registry._sql_setup import SQLSchemaSetup
from runtrack.registry._sql_transact import SQLTransactions
from runtrack.registry._sql_writes import SQLWrites
from runtrack.registry.base import StatusFilter, validate_changes, validate_list_args

__all__ = ["DEFAULT_TABLE_PREFIX", "SCHEMA_VERSION", "SQLRunRegistry"]

#: The prefix of every table name unless ``table_prefix`` says otherwise.
DEFAULT_TABLE_PREFIX: Final = "runtrack_"

_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_]{0,32}")


class SQLRunRegistry(
    SQLWrites,
    SQLOutput,
    SQLRetention,
    SQLManagers,
    SQLNotifying,
    SQLClaims,
    SQLIdempotency,
    SQLTransactions,
    SQLSchemaSetup,
):
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
        self._write_lock = None
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
        self._row_statements = {}
        self._lock_statements = {}

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
            run = await self._select_run(conn, run_id)
            if run is not None and target is RunStatus.CANCELLED:
                await self._notify_cancelled(conn, run)
            return run

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

    async def queue_depth(self) -> dict[int, int]:
        """QUEUED runs by priority, in one grouped query (see `QueueDepthReading`)."""
        runs = self._tables.runs
        query = (
            sa.select(runs.c.priority, sa.func.count())
            .where(runs.c.status == RunStatus.QUEUED.value)
            .group_by(runs.c.priority)
            .order_by(runs.c.priority)
        )

        async def work(conn: AsyncConnection) -> dict[int, int]:
            return {int(p): int(n) for p, n in await conn.execute(query)}

        return await self._transact(work, write=False)

    async def aclose(self) -> None:
        """Close the database connections if the registry built its engine. Safe twice.

        Listeners still open (see `listen`) are closed first, whoever owns the engine.
        """
        await self._close_listeners()
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
