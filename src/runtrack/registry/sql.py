"""`SQLRunRegistry`: runs kept in SQLite, PostgreSQL or MariaDB/MySQL (SQLAlchemy async Core).

Needs the ``sql`` extra (``pip install 'runtrack[sql]'``). The tables, all named with the
registry's ``table_prefix``::

    {prefix}runs     one row per run; timestamps as integer microseconds since the epoch
    {prefix}tags     (run_id, key, value): one row per tag, indexed for list_runs(tags=...)
    {prefix}output   (run_id, seq, stream, text, at): output chunks, seq from 1 per run
    {prefix}schema   the schema version (SCHEMA_VERSION)

They are created on first use, and creating them from two processes at once is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final, Self, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from runtrack._clock import dt_to_us, now_us, us_to_dt
from runtrack._exceptions import DuplicateRunError, RegistryUnavailableError, RunNotFoundError
from runtrack._models import OutputChunk, Run
from runtrack._status import TERMINAL, RunStatus, check_transition, normalize_statuses
from runtrack.registry.base import (
    MUTABLE_FIELDS,
    RunWrite,
    StatusFilter,
    validate_changes,
    validate_list_args,
    validate_output,
)

__all__ = ["DEFAULT_TABLE_PREFIX", "SCHEMA_VERSION", "SQLRunRegistry"]

#: The version of the table layout this module creates and reads.
SCHEMA_VERSION: Final = 1

#: The prefix of every table name unless ``table_prefix`` says otherwise.
DEFAULT_TABLE_PREFIX: Final = "runtrack_"

_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_]{0,32}")
_ID_LENGTH: Final = 255
#: Rows per IN (...) list: well under every driver's bound-parameter limit.
_CHUNK: Final = 500
#: Attempts of one transaction that lost a deadlock or an insert race.
_ATTEMPTS: Final = 5
#: PostgreSQL connect timeout (seconds) for engines built from a URL.
_CONNECT_TIMEOUT: Final = 10.0
#: SQLite: how long a writer waits for another process's write lock (milliseconds).
_SQLITE_BUSY_TIMEOUT_MS: Final = 5000
_SQLITE_BEGIN_OPTION: Final = "runtrack_sqlite_begin"

_BACKEND_NAMES: Final = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}
# PostgreSQL SQLSTATEs of a lost connection or a server that refuses work for now.
_PG_OUTAGE_STATES: Final = frozenset({"57P01", "57P02", "57P03", "53300"})
# PostgreSQL serialization failure and deadlock; MySQL/MariaDB deadlock.
_PG_CONFLICT_STATES: Final = frozenset({"40001", "40P01"})
_MYSQL_DEADLOCK: Final = 1213

_TIME_COLUMNS: Final = frozenset({"created_at", "started_at", "finished_at", "heartbeat_at"})
#: The columns a write may change: the status plus every `MUTABLE_FIELDS` field.
_WRITABLE_COLUMNS: Final = ("status", *sorted(MUTABLE_FIELDS))

_T = TypeVar("_T")

_log = structlog.get_logger("runtrack")

_Text = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")
_Ident = sa.String(_ID_LENGTH)


class _Tables:
    """The registry's tables, named with its prefix."""

    def __init__(self, prefix: str) -> None:
        self.metadata = sa.MetaData()
        options: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
        self.runs = sa.Table(
            f"{prefix}runs",
            self.metadata,
            sa.Column("run_id", _Ident, primary_key=True),
            sa.Column("name", _Ident, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("created_at", sa.BigInteger, nullable=False),
            sa.Column("started_at", sa.BigInteger),
            sa.Column("finished_at", sa.BigInteger),
            sa.Column("parameters", sa.JSON, nullable=False),
            sa.Column("tags", sa.JSON, nullable=False),
            # "group" is a reserved word in every SQL dialect
            sa.Column("run_group", _Ident),
            sa.Column("priority", sa.BigInteger, nullable=False),
            sa.Column("timeout", sa.Double),
            sa.Column("attempt", sa.BigInteger, nullable=False),
            sa.Column("max_attempts", sa.BigInteger, nullable=False),
            sa.Column("progress", sa.Double),
            sa.Column("progress_message", _Text),
            sa.Column("result", sa.JSON(none_as_null=True)),
            sa.Column("error_type", _Text),
            sa.Column("error_message", _Text),
            sa.Column("owner", _Text),
            sa.Column("heartbeat_at", sa.BigInteger),
            sa.Index(f"{prefix}runs_created", "created_at", "run_id"),
            sa.Index(f"{prefix}runs_status", "status", "created_at"),
            sa.Index(f"{prefix}runs_name", "name", "created_at"),
            sa.Index(f"{prefix}runs_group", "run_group", "created_at"),
            **options,
        )
        self.tags = sa.Table(
            f"{prefix}tags",
            self.metadata,
            sa.Column(
                "run_id",
                _Ident,
                sa.ForeignKey(self.runs.c.run_id, ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("key", _Ident, primary_key=True),
            sa.Column("value", _Ident, nullable=False),
            sa.Index(f"{prefix}tags_pair", "key", "value", "run_id"),
            **options,
        )
        self.output = sa.Table(
            f"{prefix}output",
            self.metadata,
            sa.Column(
                "run_id",
                _Ident,
                sa.ForeignKey(self.runs.c.run_id, ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("stream", sa.String(64), nullable=False),
            sa.Column("text", _Text, nullable=False),
            sa.Column("at", sa.BigInteger, nullable=False),
            **options,
        )
        self.schema = sa.Table(
            f"{prefix}schema",
            self.metadata,
            sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("applied_at", sa.BigInteger, nullable=False),
            **options,
        )
        runs = self.runs
        self.update_row = (
            runs.update()
            .where(runs.c.run_id == sa.bindparam("u_run_id"))
            .values(
                {
                    runs.c[name]: sa.bindparam(f"u_{name}", type_=runs.c[name].type)
                    for name in _WRITABLE_COLUMNS
                }
            )
        )

    def use_collation(self, dialect: Dialect) -> None:
        """Compare strings exactly on MySQL/MariaDB (case, accents and trailing spaces)."""
        if dialect.name != "mysql":
            return
        version = dialect.server_version_info or ()
        if getattr(dialect, "is_mariadb", False):
            collation = "utf8mb4_nopad_bin"
        elif version >= (8, 0, 17):
            collation = "utf8mb4_0900_bin"
        else:
            collation = "utf8mb4_bin"
        for table in self.metadata.tables.values():
            table.dialect_kwargs["mysql_collate"] = collation


class SQLRunRegistry:
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
            engine = _create_engine(url_or_engine)
            self._owns_engine = True
        else:
            raise TypeError(
                "SQLRunRegistry() takes a database URL or an AsyncEngine, "
                f"got {type(url_or_engine).__name__}"
            )
        self._engine = engine
        self._prefix = table_prefix
        self._tables = _Tables(table_prefix)
        dialect = engine.dialect.name
        self._backend = _BACKEND_NAMES.get(dialect, dialect)
        self._sqlite = dialect == "sqlite"
        # Writes go through an engine whose transactions begin with BEGIN IMMEDIATE on
        # SQLite (the same engine and pool elsewhere).
        self._write_engine = engine
        # SQLite takes one writer at a time anyway: queueing writers here keeps them off
        # its busy-wait loop. A :memory: database is one shared connection, so every
        # statement must take turns.
        self._write_lock: asyncio.Lock | None = None
        self._serialise_reads = False
        if self._sqlite:
            _configure_sqlite(engine)
            self._write_engine = engine.execution_options(
                **{_SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"}
            )
            self._write_lock = asyncio.Lock()
            self._serialise_reads = isinstance(engine.sync_engine.pool, StaticPool)
        self._schema_lock = asyncio.Lock()
        self._schema_ready = False

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine the registry uses."""
        return self._engine

    @property
    def table_prefix(self) -> str:
        """The prefix of the registry's table names."""
        return self._prefix

    def __repr__(self) -> str:
        return f"<SQLRunRegistry {_safe_url(self._engine.url)} prefix={self._prefix!r}>"

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
        row = _row_from_run(run)
        t = self._tables

        async def work(conn: AsyncConnection) -> None:
            try:
                await conn.execute(t.runs.insert(), row)
            except sa.exc.IntegrityError as exc:
                raise DuplicateRunError(run.run_id) from exc
            await self._insert_tags(conn, {run.run_id: row["tags"]})

        await self._transact(work, write=True)

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
        prepared: list[tuple[RunWrite, dict[str, Any]]] = []
        for write in writes:
            unknown = set(write.changes) - MUTABLE_FIELDS
            if unknown:
                raise ValueError(f"write_batch() cannot change {', '.join(sorted(unknown))}")
            prepared.append((write, _columns_from_changes(write.changes)))

        async def work(conn: AsyncConnection) -> list[bool]:
            return await self._apply_batch(conn, prepared)

        return await self._transact(work, write=True, retry_integrity=True)

    async def _apply_batch(
        self, conn: AsyncConnection, writes: Sequence[tuple[RunWrite, dict[str, Any]]]
    ) -> list[bool]:
        runs = self._tables.runs
        current: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(sorted({write.run_id for write, _ in writes})):
            # Sorted and locked in key order, so two batches cannot deadlock each other.
            result = await conn.execute(
                sa.select(runs)
                .where(runs.c.run_id.in_(chunk))
                .order_by(runs.c.run_id)
                .with_for_update()
            )
            current.update((row["run_id"], dict(row)) for row in result.mappings())
        inserted: dict[str, dict[str, Any]] = {}
        updated: dict[str, dict[str, Any]] = {}
        retagged: set[str] = set()
        applied: list[bool] = []
        for write, columns in writes:
            row = current.get(write.run_id)
            if write.run is not None and row is None:
                row = _row_from_run(write.run)
                row["run_id"] = write.run_id
                current[write.run_id] = inserted[write.run_id] = row
                applied.append(True)
                continue
            if (
                row is None
                or (write.to is None and write.run is not None)  # a duplicate id
                or (write.to is not None and RunStatus(row["status"]) not in write.expect)
            ):
                applied.append(False)
                continue
            if write.to is not None:
                row["status"] = write.to.value
            row.update(columns)
            if write.run_id not in inserted:
                updated[write.run_id] = row
                if "tags" in columns:
                    retagged.add(write.run_id)
            applied.append(True)
        if inserted:
            await conn.execute(runs.insert(), list(inserted.values()))
            await self._insert_tags(conn, {i: row["tags"] for i, row in inserted.items()})
        if updated:
            await conn.execute(
                self._tables.update_row,
                [
                    {"u_run_id": run_id, **{f"u_{c}": row[c] for c in _WRITABLE_COLUMNS}}
                    for run_id, row in updated.items()
                ],
            )
        if retagged:
            await self._replace_tags(conn, {i: updated[i]["tags"] for i in sorted(retagged)})
        return applied

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
        columns = _columns_from_changes(validate_changes(changes))
        if not expected:
            return None
        runs = self._tables.runs
        statement = (
            runs.update()
            .where(runs.c.run_id == run_id, runs.c.status.in_(_values(expected)))
            .values(status=target.value, **columns)
        )

        async def work(conn: AsyncConnection) -> Run | None:
            result = await conn.execute(statement)
            if result.rowcount != 1:
                return None
            if "tags" in columns:
                await self._replace_tags(conn, {run_id: columns["tags"]})
            return await self._select_run(conn, run_id)

        return await self._transact(work, write=True)

    async def update_run(self, run_id: str, **changes: Any) -> Run:
        """Set non-status fields and return the updated run (see `RunRegistry`).

        Raises:
            RunNotFoundError: no such run.
            ValueError: a field that cannot change (``status``: use `transition`).
            RegistryUnavailableError: the database could not be reached.
        """
        columns = _columns_from_changes(validate_changes(changes))
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

        return await self._transact(work, write=bool(columns))

    async def list_runs(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        group: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
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
            query = query.where(runs.c.status.in_(_values(statuses)))
        if name is not None:
            query = query.where(runs.c.name == name)
        if group is not None:
            query = query.where(runs.c.run_group == group)
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
            return [_run_from_row(row) for row in result.mappings()]

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

    async def append_output(
        self, run_id: str, chunks: Iterable[tuple[str, str]]
    ) -> list[OutputChunk]:
        """Append ``(stream, text)`` chunks, numbered from 1 per run (see `RunRegistry`).

        Raises:
            TypeError: a chunk is not a pair of strings.
            ValueError: a stream name is empty or too long.
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

        return await self._transact(work, write=True)

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
            TypeError: ``older_than`` is not a `timedelta`.
            ValueError: ``keep`` below 0, or an unknown status.
            RegistryUnavailableError: the database could not be reached.
        """
        if not isinstance(older_than, timedelta):
            raise TypeError(f"older_than must be a datetime.timedelta, got {older_than!r}")
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep!r}")
        wanted = (normalize_statuses(statuses) or frozenset()) & TERMINAL
        if not wanted:
            return 0
        cutoff = now_us() - older_than // timedelta(microseconds=1)
        t = self._tables
        runs = t.runs
        age = sa.func.coalesce(runs.c.finished_at, runs.c.created_at)
        finished = runs.c.status.in_(_values(wanted))

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
            for chunk in _chunks(ids):
                await conn.execute(t.output.delete().where(t.output.c.run_id.in_(chunk)))
                await conn.execute(t.tags.delete().where(t.tags.c.run_id.in_(chunk)))
                result = await conn.execute(runs.delete().where(runs.c.run_id.in_(chunk)))
                deleted += result.rowcount
            return deleted

        return await self._transact(work, write=True)

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
        return None if row is None else _run_from_row(row)

    async def _insert_tags(
        self, conn: AsyncConnection, tags: Mapping[str, Mapping[str, str]]
    ) -> None:
        rows = [
            {"run_id": run_id, "key": key, "value": value}
            for run_id, pairs in tags.items()
            for key, value in pairs.items()
        ]
        if rows:
            await conn.execute(self._tables.tags.insert(), rows)

    async def _replace_tags(
        self, conn: AsyncConnection, tags: Mapping[str, Mapping[str, str]]
    ) -> None:
        tag_rows = self._tables.tags
        for chunk in _chunks(list(tags)):
            await conn.execute(tag_rows.delete().where(tag_rows.c.run_id.in_(chunk)))
        await self._insert_tags(conn, tags)

    async def _transact(
        self,
        work: Callable[[AsyncConnection], Awaitable[_T]],
        *,
        write: bool,
        retry_integrity: bool = False,
    ) -> _T:
        """Run ``work`` in one transaction; retry deadlocks; map outages.

        ``retry_integrity`` retries a unique-key violation too: a batch that lost an insert
        race to another process sees the row the second time and takes its CAS path.
        """
        await self._ensure_schema()
        engine = self._write_engine if write else self._engine
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
                if attempt < _ATTEMPTS and _is_conflict(exc, integrity=retry_integrity):
                    await asyncio.sleep(random.uniform(0, 0.005 * attempt))
                    continue
                if _is_outage(exc):
                    raise self._unavailable(exc) from exc
                raise

    async def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_created():  # another task did it while we waited
                return
            try:
                await self._create_schema()
            except Exception as exc:
                if _is_outage(exc):
                    raise self._unavailable(exc) from exc
                raise
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
                break
            except sa.exc.DBAPIError as exc:
                # Another process created a table between our check and our CREATE: the
                # next round's check sees it.
                if attempt == _ATTEMPTS or (_is_outage(exc) and exc.connection_invalidated):
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * attempt))
        try:
            async with self._write_engine.begin() as conn:
                stored = await conn.scalar(sa.select(sa.func.max(t.schema.c.version)))
                if stored is None:
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
        _log.debug(
            "sql_schema_ready",
            backend=self._backend,
            url=_safe_url(self._engine.url),
            prefix=self._prefix,
            schema_version=SCHEMA_VERSION,
        )

    def _unavailable(self, exc: BaseException) -> RegistryUnavailableError:
        orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
        detail = f"{type(orig).__name__}: {orig}".strip().rstrip(":")
        password = self._engine.url.password
        if password:
            detail = detail.replace(str(password), "***")
        if len(detail) > 300:
            detail = detail[:297] + "..."
        return RegistryUnavailableError(self._backend, detail)


# -- rows -----------------------------------------------------------------------------------


def _row_from_run(run: Run) -> dict[str, Any]:
    def us(value: Any) -> int | None:
        return None if value is None else dt_to_us(value)

    return {
        "run_id": run.run_id,
        "name": run.name,
        "status": RunStatus(run.status).value,
        "created_at": dt_to_us(run.created_at),
        "started_at": us(run.started_at),
        "finished_at": us(run.finished_at),
        "parameters": dict(run.parameters),
        "tags": dict(run.tags),
        "run_group": run.group,
        "priority": run.priority,
        "timeout": run.timeout,
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
        "progress": run.progress,
        "progress_message": run.progress_message,
        "result": run.result,
        "error_type": run.error_type,
        "error_message": run.error_message,
        "owner": run.owner,
        "heartbeat_at": us(run.heartbeat_at),
    }


def _columns_from_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validated changes as column values (timestamps in microseconds)."""
    columns: dict[str, Any] = {}
    for field, value in changes.items():
        if field in _TIME_COLUMNS and value is not None:
            columns[field] = dt_to_us(value)
        elif field == "tags":
            columns[field] = dict(value)
        else:
            columns[field] = value
    return columns


def _run_from_row(row: Mapping[Any, Any]) -> Run:
    data = dict(row)
    data["group"] = data.pop("run_group")
    for field in _TIME_COLUMNS:
        if data[field] is not None:
            data[field] = us_to_dt(data[field])
    data["parameters"] = data["parameters"] or {}
    data["tags"] = data["tags"] or {}
    return Run.model_validate(data)


def _values(statuses: Iterable[RunStatus]) -> list[str]:
    return sorted(status.value for status in statuses)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


# -- engines and errors ---------------------------------------------------------------------


def _create_engine(url: str | URL) -> AsyncEngine:
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(
            "SQLRunRegistry() needs a database URL such as sqlite+aiosqlite:///runs.db, "
            "postgresql+asyncpg://user@host/db or mysql+asyncmy://user@host/db"
        ) from exc
    connect_args: dict[str, Any] = {}
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.get_driver_name() == "asyncpg":
        if "timeout" not in parsed.query:
            connect_args["timeout"] = _CONNECT_TIMEOUT
    elif backend == "mysql" and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return create_async_engine(parsed, connect_args=connect_args)


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, a busy timeout, foreign keys, and BEGIN emitted by SQLAlchemy, not sqlite3.

    sqlite3's own transaction handling begins late (at the first write) and never for
    SELECT; taking BEGIN over, as SQLAlchemy's SQLite documentation recommends, lets write
    transactions start with BEGIN IMMEDIATE and so take the write lock up front.
    """
    sync_engine = engine.sync_engine
    if sa.event.contains(sync_engine, "connect", _sqlite_on_connect):
        return
    sa.event.listen(sync_engine, "connect", _sqlite_on_connect)
    sa.event.listen(sync_engine, "begin", _sqlite_on_begin)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get(_SQLITE_BEGIN_OPTION, "BEGIN"))


def _safe_url(url: URL) -> str:
    """The URL with its password (also one given as a query parameter) masked."""
    secret = {k: "***" for k in url.query if k.lower() in {"password", "passwd", "pwd"}}
    if secret:
        url = url.update_query_dict(secret)
    return url.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def _sqlstate(exc: BaseException) -> str | None:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    state = getattr(orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def _mysql_errno(exc: BaseException) -> int | None:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _is_conflict(exc: BaseException, *, integrity: bool) -> bool:
    """A deadlock or serialisation failure (or, if asked, a lost insert race): retry."""
    if not isinstance(exc, sa.exc.DBAPIError) or exc.connection_invalidated:
        return False
    if integrity and isinstance(exc, sa.exc.IntegrityError):
        return True
    return _sqlstate(exc) in _PG_CONFLICT_STATES or _mysql_errno(exc) == _MYSQL_DEADLOCK


def _is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached (worth retrying later).

    Pool exhaustion (`sqlalchemy.exc.TimeoutError`) is not an outage: the server is fine,
    this process asks too much of its pool.
    """
    if isinstance(exc, sa.exc.TimeoutError):
        return False
    if isinstance(exc, OSError | asyncio.TimeoutError):  # ConnectionRefusedError, resets, ...
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            return True
    state = _sqlstate(exc)
    if state is not None:
        return state.startswith("08") or state in _PG_OUTAGE_STATES
    return _is_asyncpg_interface_error(exc)


def _is_asyncpg_interface_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an asyncpg client-side error, raised unwrapped while connecting."""
    try:
        exceptions = importlib.import_module("asyncpg.exceptions")
    except ImportError:
        return False
    interface_error: type[BaseException] = exceptions.InterfaceError
    return isinstance(exc, interface_error)
