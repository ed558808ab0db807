"""What `SQLRunRegistry` promises beyond the conformance suite.

Schema creation (once, and safely from two processes at once), SQLite's WAL setup,
credentials kept out of reprs, logs and errors, outages told apart from pool exhaustion,
``write_batch`` as one transaction, and exact string comparison on every database. Tests
that involve "two processes" use two registries with two engines on the same tables.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from structlog.testing import capture_logs

from registries import skip_or_fail
from runtrack import (
    RegistryConfigError,
    RegistryUnavailableError,
    Run,
    RunStatus,
    registry_from_url,
)
from runtrack._clock import dt_to_us
from runtrack.registry.base import BatchWriting, RunWrite, stored_run
from runtrack.registry.sql import SCHEMA_VERSION, SQLRunRegistry
from sql_registries import drop_tables, mysql_url, postgres_url, sql_registry, unique_prefix

Q, R, C = RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.COMPLETED

BACKENDS = ["sqlite", "postgresql", "mariadb"]


_reachable: dict[str, str | None] = {}


async def require_server(url: str) -> None:
    """Skip (or fail on CI) unless the server behind ``url`` answers; probed once per URL."""
    if url not in _reachable:
        engine = create_async_engine(url)
        try:
            async with asyncio.timeout(5), engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            _reachable[url] = None
        except (OSError, TimeoutError, sa.exc.DBAPIError) as exc:
            _reachable[url] = f"{type(exc).__name__}: {exc}"
        finally:
            await engine.dispose()
    reason = _reachable[url]
    if reason is not None:
        skip_or_fail(f"{url} is unreachable ({reason})")


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL of each SQL backend (SQLite: a file in this test's directory)."""
    backend: str = request.param
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    url = postgres_url() if backend == "postgresql" else mysql_url()
    await require_server(url)
    return url


@pytest.fixture
async def registry(url: str) -> AsyncIterator[SQLRunRegistry]:
    """A registry with tables of its own, dropped after the test."""
    async with sql_registry(url) as registry:
        yield registry


@pytest.fixture
def twin(url: str) -> Callable[[SQLRunRegistry], Any]:
    """Open a second registry (another engine, as another process would) on the same tables."""

    @asynccontextmanager
    async def open_twin(first: SQLRunRegistry) -> AsyncIterator[SQLRunRegistry]:
        async with SQLRunRegistry(url, table_prefix=first.table_prefix) as second:
            yield second

    return open_twin


def statements(registry: SQLRunRegistry) -> list[str]:
    """Every SQL statement the registry's engine sends from now on (the list fills up)."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    sa.event.listen(registry.engine.sync_engine, "before_cursor_execute", record)
    return sent


async def aiosqlite_threads_stopped() -> None:
    """Wait until aiosqlite's worker threads have ended and handed back their results.

    After a failed connect, aiosqlite stops its worker thread without awaiting it; the
    thread then reports to the event loop, which must still be open by then.
    """
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, 5)
    await asyncio.sleep(0)  # let the callbacks the threads scheduled run


async def indexes_and_versions(registry: SQLRunRegistry) -> tuple[set[str], list[int]]:
    """The names of the runs table's indexes, and the schema versions recorded, sorted."""
    prefix = registry.table_prefix

    def inspect(conn: sa.Connection) -> set[str]:
        return {str(ix["name"]) for ix in sa.inspect(conn).get_indexes(f"{prefix}runs")}

    async with registry.engine.connect() as conn:
        indexes = await conn.run_sync(inspect)
        rows = (await conn.execute(sa.text(f"SELECT version FROM {prefix}schema"))).all()
    return indexes, sorted(version for (version,) in rows)


def _partial_index(conn: sa.Connection, name: str) -> bool:
    """Whether index ``name`` is partial (has a WHERE clause); MySQL has none."""
    dialect = conn.dialect.name
    if dialect == "mysql":
        return False
    if dialect == "postgresql":
        query = "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
    else:
        query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
    return " WHERE " in str(conn.execute(sa.text(query), {"name": name}).scalar_one()).upper()


def pooled(engine: AsyncEngine) -> int:
    """How many connections wait in the engine's pool."""
    pool: Any = engine.sync_engine.pool
    return int(pool.checkedin())


class TestSchema:
    """The schema is created on first use, once, and records its version."""

    async def test_created_once_with_version_row(self, url: str) -> None:
        registry = SQLRunRegistry(url, table_prefix=unique_prefix())
        try:
            sent = statements(registry)

            await asyncio.gather(*(registry.count_runs() for _ in range(10)))
            await registry.add_run(Run(run_id="r1"))
            await registry.list_runs()

            creates = [s for s in sent if s.lstrip().upper().startswith("CREATE TABLE")]
            assert len(creates) == 6
            async with registry.engine.connect() as conn:
                table = f"{registry.table_prefix}schema"
                rows = (await conn.execute(sa.text(f"SELECT version FROM {table}"))).all()
            assert [tuple(row) for row in rows] == [(SCHEMA_VERSION,)]
        finally:
            await drop_tables(registry)

    async def test_tables_and_indexes(self, registry: SQLRunRegistry) -> None:
        prefix = registry.table_prefix

        def inspect(conn: sa.Connection) -> dict[str, Any]:
            inspector = sa.inspect(conn)
            tables = set(inspector.get_table_names())
            indexes = {
                tuple(ix["column_names"])
                for table in ("runs", "tags")
                for ix in inspector.get_indexes(f"{prefix}{table}")
            }
            return {"tables": tables, "indexes": indexes}

        async with registry.engine.connect() as conn:
            found = await conn.run_sync(inspect)

        tables = ("runs", "tags", "output", "schema", "managers", "idempotency")
        assert {f"{prefix}{t}" for t in tables} <= found["tables"]
        assert {
            ("owner", "status", "finished_at"),
            ("created_at", "run_id"),
            ("status", "created_at"),
            ("name", "created_at"),
            ("run_group", "created_at"),
            ("key", "value", "run_id"),
        } <= found["indexes"]

    async def test_concurrent_creation_from_two_engines(self, url: str) -> None:
        prefix = unique_prefix()
        first = SQLRunRegistry(url, table_prefix=prefix)
        second = SQLRunRegistry(url, table_prefix=prefix)
        try:
            await asyncio.gather(
                first.add_run(Run(run_id="from-first")), second.add_run(Run(run_id="from-second"))
            )

            assert {r.run_id for r in await first.list_runs()} == {"from-first", "from-second"}
            assert {r.run_id for r in await second.list_runs()} == {"from-first", "from-second"}
        finally:
            await second.aclose()
            await drop_tables(first)

    async def test_a_version_1_schema_gets_the_managers_table(
        self, registry: SQLRunRegistry, twin: Callable[[SQLRunRegistry], Any]
    ) -> None:
        await registry.add_run(Run(run_id="kept", owner="old"))
        prefix = registry.table_prefix
        async with registry.engine.begin() as conn:  # back to what version 1 created
            await conn.run_sync(lambda c: sa.Table(f"{prefix}managers", sa.MetaData()).drop(c))
            on = f" ON {prefix}runs" if conn.dialect.name == "mysql" else ""
            await conn.execute(sa.text(f"DROP INDEX {prefix}runs_owner{on}"))
            await conn.execute(sa.text(f"DELETE FROM {prefix}schema"))
            await conn.execute(
                sa.text(f"INSERT INTO {prefix}schema (version, applied_at) VALUES (1, 0)")
            )

        async with twin(registry) as second:
            assert await second.list_managers() == []
            assert await second.cancelled_runs("old", datetime.now(UTC)) == []
            run = await second.get_run("kept")

            def inspect(conn: sa.Connection) -> set[tuple[str, ...]]:
                ixs = sa.inspect(conn).get_indexes(f"{prefix}runs")
                return {tuple(str(c) for c in ix["column_names"]) for ix in ixs}

            async with second.engine.connect() as conn:
                indexes = await conn.run_sync(inspect)
                versions = (
                    await conn.execute(sa.text(f"SELECT version FROM {prefix}schema"))
                ).all()
        assert run is not None
        assert ("owner", "status", "finished_at") in indexes
        assert sorted(v for (v,) in versions) == [1, SCHEMA_VERSION]

    async def test_a_version_2_schema_gets_the_durable_columns(
        self, registry: SQLRunRegistry, twin: Callable[[SQLRunRegistry], Any]
    ) -> None:
        await registry.add_run(Run(run_id="kept", name="old", parameters={"a": 1}))
        prefix = registry.table_prefix
        async with registry.engine.begin() as conn:  # back to what version 2 created
            on = f" ON {prefix}runs" if conn.dialect.name == "mysql" else ""
            for index in ("runs_claimable", "runs_dead"):
                await conn.execute(sa.text(f"DROP INDEX {prefix}{index}{on}"))
            for column in (
                "task",
                "args",
                "idempotency_key",
                "dead",
                "requeued_from",
                "requeue_on_interrupt",
                "not_before",
            ):
                await conn.execute(sa.text(f"ALTER TABLE {prefix}runs DROP COLUMN {column}"))
            await conn.execute(sa.text(f"DELETE FROM {prefix}schema"))
            await conn.execute(
                sa.text(f"INSERT INTO {prefix}schema (version, applied_at) VALUES (2, 0)")
            )

        async with twin(registry) as second:
            old = await second.get_run("kept")
            new = Run(run_id="new", task="t", args={"args": [1]}, dead=True)
            await second.add_run(new)
            assert await second.get_run("new") == new
            assert [r.run_id for r in await second.list_runs(dead=False)] == ["kept"]
            assert [r.run_id for r in await second.list_runs(task="t")] == ["new"]
            indexes, versions = await indexes_and_versions(second)
        assert old is not None
        assert (old.task, old.args, old.dead, old.requeue_on_interrupt) == (
            None,
            None,
            False,
            False,
        )
        assert {f"{prefix}runs_claimable", f"{prefix}runs_dead"} <= indexes
        assert versions == [2, SCHEMA_VERSION]

    async def test_a_version_3_schema_gets_not_before_and_the_claim_index(
        self, registry: SQLRunRegistry, twin: Callable[[SQLRunRegistry], Any]
    ) -> None:
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        await registry.add_run(Run(run_id="kept", task="t", created_at=t0))
        prefix = registry.table_prefix
        async with registry.engine.begin() as conn:  # back to what version 3 created
            on = f" ON {prefix}runs" if conn.dialect.name == "mysql" else ""
            await conn.execute(sa.text(f"DROP INDEX {prefix}runs_claimable{on}"))
            await conn.execute(sa.text(f"ALTER TABLE {prefix}runs DROP COLUMN not_before"))
            await conn.execute(
                sa.text(
                    f"CREATE INDEX {prefix}runs_claim ON {prefix}runs "
                    "(task, status, priority DESC, created_at)"
                )
            )
            await conn.execute(sa.text(f"DELETE FROM {prefix}schema"))
            await conn.execute(
                sa.text(f"INSERT INTO {prefix}schema (version, applied_at) VALUES (3, 0)")
            )

        async with twin(registry) as second:
            old = await second.get_run("kept")
            now = datetime.now(UTC)
            due = Run(run_id="due", task="t", created_at=now, not_before=now)
            later = Run(run_id="later", task="t", not_before=now + timedelta(hours=1))
            await second.add_runs([due, later])
            assert await second.get_run("later") == later
            claimed = await second.claim_runs("me", ["t"], 10)
            indexes, versions = await indexes_and_versions(second)
        assert old is not None
        assert old.not_before is None
        assert [r.run_id for r in claimed] == ["kept", "due"]
        assert f"{prefix}runs_claimable" in indexes
        assert f"{prefix}runs_claim" not in indexes
        assert versions == [3, SCHEMA_VERSION]

    async def test_a_version_4_schema_gets_partial_indexes(
        self, registry: SQLRunRegistry, twin: Callable[[SQLRunRegistry], Any]
    ) -> None:
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        await registry.add_runs(
            [
                Run(run_id="grouped", group="g", created_at=t0),
                Run(run_id="dead", task="t", dead=True, created_at=t0),
                Run(run_id="owned", owner="old", created_at=t0),
            ]
        )
        prefix = registry.table_prefix
        whole = {
            "runs_owner": "owner, status, finished_at",
            "runs_dead": "dead, created_at",
            "runs_group": "run_group, created_at",
        }
        async with registry.engine.begin() as conn:  # back to what version 4 created
            mysql = conn.dialect.name == "mysql"
            for name, columns in whole.items():
                if mysql:  # MariaDB/MySQL keep whole indexes: nothing to rebuild
                    continue
                await conn.execute(sa.text(f"DROP INDEX {prefix}{name}"))
                await conn.execute(
                    sa.text(f"CREATE INDEX {prefix}{name} ON {prefix}runs ({columns})")
                )
            await conn.execute(sa.text(f"DELETE FROM {prefix}schema"))
            await conn.execute(
                sa.text(f"INSERT INTO {prefix}schema (version, applied_at) VALUES (4, 0)")
            )

        async with twin(registry) as second:
            grouped = await second.list_runs(group="g")
            dead = await second.list_runs(dead=True)
            await second.transition(
                "owned",
                RunStatus.CANCELLED,
                expect={RunStatus.QUEUED},
                finished_at=datetime.now(UTC),
            )
            cancelled = await second.cancelled_runs("old", t0)
            indexes, versions = await indexes_and_versions(second)
            async with second.engine.connect() as conn:
                partial = {
                    name: await conn.run_sync(_partial_index, f"{prefix}{name}") for name in whole
                }
        assert [r.run_id for r in grouped] == ["grouped"]
        assert [r.run_id for r in dead] == ["dead"]
        assert cancelled == ["owned"]
        assert {f"{prefix}{name}" for name in whole} <= indexes
        assert partial == dict.fromkeys(whole, not mysql)
        assert versions == [4, SCHEMA_VERSION]

    async def test_existing_schema_is_reused(
        self, registry: SQLRunRegistry, twin: Callable[[SQLRunRegistry], Any]
    ) -> None:
        await registry.add_run(Run(run_id="kept"))

        async with twin(registry) as second:
            sent = statements(second)
            run = await second.get_run("kept")

        assert run is not None
        assert not [s for s in sent if s.lstrip().upper().startswith("CREATE")]


class TestClaimIndex:
    """A claim of one task reads its runs through the claim index, in order, no more."""

    async def test_a_claim_reads_as_many_entries_as_it_takes(
        self, registry: SQLRunRegistry
    ) -> None:
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        await registry.add_runs(
            [
                Run(task=f"t{i % 2}", priority=i % 3, created_at=t0 + timedelta(microseconds=i))
                for i in range(3000)
            ]
        )
        await registry.claim_runs("other", ["t0"], 300)  # claimed, not started: still QUEUED
        await assert_claim_reads_only(registry, "t0", 100)

    async def test_a_long_history_does_not_lure_the_claim_off_its_index(
        self, registry: SQLRunRegistry
    ) -> None:
        """Owned, finished runs outnumber the backlog: the statistics, which take owner and
        status as independent, then see few unclaimed QUEUED runs, and an index holding
        unowned runs as well would look cheaper to read them all through, then sort."""
        runs = [Run(task="t0") for _ in range(22_000)]
        for i in range(0, len(runs), 10_000):
            await registry.add_runs(runs[i : i + 10_000])
        prefix = registry.table_prefix
        cutoff = dt_to_us(sorted(run.created_at for run in runs)[19_999])
        async with registry.engine.begin() as conn:  # the first 20,000 ran long ago
            await conn.execute(
                sa.text(
                    f"UPDATE {prefix}runs SET status = 'completed', owner = 'old' "
                    "WHERE created_at <= :cutoff"
                ),
                {"cutoff": cutoff},
            )
        await assert_claim_reads_only(registry, "t0", 1000)


async def assert_claim_reads_only(registry: SQLRunRegistry, task: str, limit: int) -> None:
    """A claim of ``limit`` runs of ``task`` reads that many entries of the claim index."""
    prefix = registry.table_prefix
    async with registry.engine.begin() as conn:
        dialect = conn.dialect.name
        if dialect != "sqlite":
            table = f"TABLE {prefix}runs" if dialect == "mysql" else f"{prefix}runs"
            await conn.execute(sa.text(f"ANALYZE {table}"))
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if "owner IS NULL" in statement and "ORDER BY" in statement:
            sent.append((statement, params))

    sa.event.listen(registry.engine.sync_engine, "before_cursor_execute", record)
    claimed = await registry.claim_runs("me", [task], limit)
    statement, params = sent[-1]

    async with registry.engine.connect() as conn:
        transaction = await conn.begin()  # EXPLAIN ANALYZE runs it: undone after
        if dialect == "postgresql":
            explain = f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"
            answer = (await conn.exec_driver_sql(explain, params)).scalar_one()
            nodes = list(plan_nodes(json.loads(answer) if isinstance(answer, str) else answer))
            scans = [n for n in nodes if n.get("Index Name") == f"{prefix}runs_claimable"]
            assert [n["Actual Rows"] for n in scans] == [limit], nodes
            assert not [n for n in nodes if "Sort" in n["Node Type"]], nodes
            # The claimed rows are found by key, not hashed against the whole table.
            assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
        elif dialect == "mysql":
            explain = f"ANALYZE FORMAT=JSON {statement}"
            plan = json.loads((await conn.exec_driver_sql(explain, params)).scalar_one())
            access = plan["query_block"]["nested_loop"][0]["table"]
            assert access["key"] == f"{prefix}runs_claimable", plan
            assert access["r_rows"] == limit, plan
            assert "filesort" not in json.dumps(plan), plan
        else:
            explain = f"EXPLAIN QUERY PLAN {statement}"
            steps = [row[-1] for row in await conn.exec_driver_sql(explain, params)]
            assert any(f"INDEX {prefix}runs_claimable" in step for step in steps), steps
            assert not [step for step in steps if "TEMP B-TREE" in step], steps
        await transaction.rollback()
    assert len(claimed) == limit


def plan_nodes(plan: Any) -> Iterator[dict[str, Any]]:
    """Every node of a PostgreSQL JSON plan."""
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.get("Plans", ()))


class TestSQLite:
    """SQLite runs in WAL mode with a busy timeout and foreign keys on."""

    async def test_pragmas(self, tmp_path: Path) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
        async with sql_registry(url) as registry, registry.engine.connect() as conn:
            mode = await conn.scalar(sa.text("PRAGMA journal_mode"))
            timeout = await conn.scalar(sa.text("PRAGMA busy_timeout"))
            foreign_keys = await conn.scalar(sa.text("PRAGMA foreign_keys"))

        assert (mode, timeout, foreign_keys) == ("wal", 5000, 1)

    async def test_engine_passed_in_is_configured(self, tmp_path: Path) -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
        try:
            async with SQLRunRegistry(engine) as registry:
                await registry.add_run(Run(run_id="r1"))
                async with engine.connect() as conn:
                    assert await conn.scalar(sa.text("PRAGMA journal_mode")) == "wal"
            # the registry did not dispose of an engine it was given
            assert pooled(engine) > 0
        finally:
            await engine.dispose()

    async def test_memory_database(self) -> None:
        async with SQLRunRegistry("sqlite+aiosqlite://") as registry:
            await asyncio.gather(*(registry.add_run(Run(run_id=f"r{i}")) for i in range(20)))
            results = await asyncio.gather(*(registry.transition("r0", R) for _ in range(10)))

            assert len(await registry.list_runs()) == 20
            assert sum(r is not None for r in results) == 1


class TestCredentials:
    """Passwords never show in reprs, errors or log lines."""

    SECRET = "s3cr3t-pw"

    @pytest.mark.parametrize(
        "url",
        [
            f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:5432/test",
            f"mysql+asyncmy://root:{SECRET}@127.0.0.1:3306/test",
            f"mysql+asyncmy://root@127.0.0.1:3306/test?password={SECRET}",
        ],
        ids=["postgresql", "mariadb", "query-password"],
    )
    def test_repr_hides_password(self, url: str) -> None:
        registry = SQLRunRegistry(url, table_prefix="p_")

        text = repr(registry)

        assert self.SECRET not in text
        assert "***" in text
        assert text.startswith("<SQLRunRegistry ")
        assert text.endswith(" prefix='p_'>")

    def test_repr_example(self) -> None:
        registry = SQLRunRegistry(
            f"postgresql+asyncpg://postgres:{self.SECRET}@127.0.0.1:5432/test"
        )

        assert repr(registry) == (
            "<SQLRunRegistry postgresql+asyncpg://postgres:***@127.0.0.1:5432/test "
            "prefix='runtrack_'>"
        )

    async def test_error_and_logs_hide_password(self) -> None:
        url = f"postgresql+asyncpg://postgres:{self.SECRET}@127.0.0.1:1/test"
        with capture_logs() as logs, pytest.raises(RegistryUnavailableError) as info:
            async with SQLRunRegistry(url) as registry:
                await registry.get_run("x")

        assert self.SECRET not in str(info.value)
        assert self.SECRET not in repr(logs)


class TestPrefix:
    """table_prefix is validated, since it becomes part of SQL identifiers."""

    @pytest.mark.parametrize(
        "prefix", ["bad-prefix", "x; DROP TABLE runs; --", "a" * 33, "é_", 'q"', "a b"]
    )
    def test_bad_prefix(self, prefix: str) -> None:
        with pytest.raises(ValueError, match="table_prefix"):
            SQLRunRegistry("sqlite+aiosqlite:///runs.db", table_prefix=prefix)

    def test_non_string_prefix(self) -> None:
        with pytest.raises(ValueError, match="table_prefix"):
            SQLRunRegistry("sqlite+aiosqlite:///runs.db", table_prefix=None)  # type: ignore[arg-type]

    @pytest.mark.parametrize("prefix", ["", "runtrack_", "App_2_", "_x"])
    def test_good_prefix(self, prefix: str) -> None:
        assert SQLRunRegistry("sqlite+aiosqlite:///runs.db", table_prefix=prefix).table_prefix == (
            prefix
        )

    def test_not_a_url(self) -> None:
        with pytest.raises(TypeError, match="AsyncEngine"):
            SQLRunRegistry(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="URL"):
            SQLRunRegistry("not a url")


class TestOutages:
    """An unreachable database is a RegistryUnavailableError naming it; a full pool is not."""

    @pytest.mark.parametrize(
        ("url", "backend"),
        [
            ("postgresql+asyncpg://postgres@127.0.0.1:1/test", "postgresql"),
            ("mysql+asyncmy://root@127.0.0.1:1/test", "mysql"),
        ],
        ids=["postgresql", "mariadb"],
    )
    async def test_unreachable(self, url: str, backend: str) -> None:
        started = time.monotonic()
        async with SQLRunRegistry(url) as registry:
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: registry.get_run("x"),
                lambda: registry.add_run(Run()),
            ]
            for call in calls:
                with pytest.raises(RegistryUnavailableError) as info:
                    await call()

                assert info.value.backend == backend == registry.backend
                assert f"the {backend} registry is unavailable" in str(info.value)
        assert time.monotonic() - started < 5
        await aiosqlite_threads_stopped()

    async def test_pool_exhaustion_is_not_an_outage(self, url: str) -> None:
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.1)
        registry = SQLRunRegistry(engine, table_prefix=unique_prefix())
        try:
            await registry.count_runs()
            async with engine.connect() as held:
                await held.execute(sa.text("SELECT 1"))

                with pytest.raises(sa.exc.TimeoutError):
                    await registry.get_run("x")
        finally:
            await drop_tables(registry)

    async def test_failed_batch_rolls_back(self, registry: SQLRunRegistry) -> None:
        await registry.add_run(Run(run_id="old", status=R))

        writes: list[str] = []

        def cut(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            # the batch's second write (its first inserted the new run) loses the connection
            if statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
                writes.append(statement)
                if len(writes) == 2:
                    raise ConnectionResetError("connection reset by peer (simulated)")

        sa.event.listen(registry.engine.sync_engine, "before_cursor_execute", cut)
        with pytest.raises(RegistryUnavailableError):
            await registry.write_batch(
                [
                    RunWrite("new", run=Run(run_id="new")),
                    RunWrite("old", to=C, expect=frozenset({R}), changes={"result": 1}),
                ]
            )
        sa.event.remove(registry.engine.sync_engine, "before_cursor_execute", cut)
        assert len(writes) == 2

        assert await registry.get_run("new") is None
        old = await registry.get_run("old")
        assert old is not None
        assert (old.status, old.result) == (R, None)


def with_database(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    database: str | None = None,
) -> str:
    """``url`` with its user, password or database replaced (None: kept)."""
    changed = sa.make_url(url).set(username=username, password=password, database=database)
    return changed.render_as_string(hide_password=False)


async def config_error(url: str) -> RegistryConfigError:
    """The RegistryConfigError a first read and a first write on ``url`` raise (the same)."""
    async with SQLRunRegistry(url) as registry:
        errors: list[RegistryConfigError] = []
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: registry.get_run("x"),
            lambda: registry.add_run(Run()),
        ]
        for call in calls:
            with pytest.raises(RegistryConfigError) as info:
                await call()
            errors.append(info.value)
        assert info.value.backend == registry.backend
    await aiosqlite_threads_stopped()
    assert str(errors[0]) == str(errors[1])
    message = str(errors[0])
    assert "cannot be used as configured" in message
    assert "check that the server is running" not in message
    assert "DBAPIError" not in message
    return errors[0]


class TestConfigErrors:
    """A refused login, a missing role, database or folder is a RegistryConfigError."""

    async def test_postgresql_missing_role(self) -> None:
        await require_server(postgres_url())
        role = f"no_such_role_{uuid.uuid4().hex[:8]}"

        error = await config_error(with_database(postgres_url(), username=role))

        assert f'role "{role}" does not exist' in error.problem
        assert "create that role" in error.fix

    async def test_postgresql_missing_database(self) -> None:
        await require_server(postgres_url())

        error = await config_error(with_database(postgres_url(), database="no_such_db_rt"))

        assert 'database "no_such_db_rt" does not exist' in error.problem
        assert "CREATE DATABASE" in error.fix

    async def test_mariadb_wrong_password(self) -> None:
        await require_server(mysql_url())
        url = with_database(mysql_url(), username="root", password="wrong-pw-rt")

        error = await config_error(url)

        assert "Access denied for user 'root'" in error.problem
        assert "wrong-pw-rt" not in str(error)
        assert "password" in error.fix

    async def test_mariadb_unknown_user(self) -> None:
        await require_server(mysql_url())

        error = await config_error(with_database(mysql_url(), username="no_such_user_rt"))

        assert "Access denied for user 'no_such_user_rt'" in error.problem

    async def test_mariadb_missing_database(self) -> None:
        await require_server(mysql_url())

        error = await config_error(with_database(mysql_url(), database="no_such_db_rt"))

        assert "Unknown database 'no_such_db_rt'" in error.problem
        assert "CREATE DATABASE" in error.fix

    async def test_sqlite_missing_folder(self, tmp_path: Path) -> None:
        folder = tmp_path / "missing" / "sub"

        error = await config_error(f"sqlite+aiosqlite:///{folder / 'runs.db'}")

        assert error.problem == f"the folder {str(folder)!r} of the SQLite database does not exist"
        assert "create it" in error.fix
        assert not folder.exists()

    async def test_sqlite_path_is_a_folder(self, tmp_path: Path) -> None:
        error = await config_error(f"sqlite+aiosqlite:///{tmp_path}")

        assert "is a folder" in error.problem

    async def test_sqlite_not_a_database(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.txt"
        path.write_text("not a database, " * 100)

        error = await config_error(f"sqlite+aiosqlite:///{path}")

        assert "is not a SQLite database" in error.problem
        assert path.read_text() == "not a database, " * 100


class TestRefusedValues:
    """A value the database refuses is a ValueError, and the registry keeps working."""

    async def test_mariadb_packet_too_large(self) -> None:
        await require_server(mysql_url())
        async with sql_registry(mysql_url()) as registry:
            async with registry.engine.connect() as conn:
                limit = await conn.scalar(sa.text("SELECT @@max_allowed_packet"))
            assert isinstance(limit, int)
            run = Run(run_id="huge", status=R)
            await registry.add_run(run)
            huge = "x" * (limit + 1000)
            good = [Run(run_id=f"good-{i}") for i in range(3)]

            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: registry.add_run(Run(run_id="huge-params", parameters={"p": huge})),
                lambda: registry.transition("huge", C, result=huge),
                lambda: registry.update_run("huge", progress_message=huge),
                lambda: registry.append_output("huge", [("stdout", huge)]),
                lambda: registry.write_batch(
                    [
                        RunWrite("huge", to=C, expect=frozenset({R}), changes={"result": huge}),
                        *(RunWrite(r.run_id, stored=stored_run(r)) for r in good),
                    ]
                ),
            ]
            for call in calls:
                with pytest.raises(ValueError, match="max_allowed_packet") as info:
                    await call()
                assert type(info.value) is ValueError
                assert "'huge" in str(info.value)

            assert await registry.get_run("huge") == run
            assert await registry.get_run("huge-params") is None
            assert await registry.get_output("huge") == []
            for write in good:
                assert await registry.write_batch([RunWrite(write.run_id, run=write)]) == [True]
            assert len(await registry.list_runs()) == 4

    async def test_mariadb_check_failure_is_not_an_outage(self) -> None:
        await require_server(mysql_url())
        async with sql_registry(mysql_url()) as registry:
            await registry.add_run(Run(run_id="deep", status=R))
            deep: Any = 1
            for _ in range(40):
                deep = [deep]

            with pytest.raises(ValueError, match="nested over 31") as info:
                await registry.transition("deep", C, result=deep)

            assert isinstance(info.value.__cause__, sa.exc.OperationalError)
            assert await registry.transition("deep", C, result=[[1]]) is not None


class TestWriteBatch:
    """write_batch on SQL: insert-if-absent, CAS, field updates, and insert races."""

    async def test_semantics(self, registry: SQLRunRegistry) -> None:
        assert isinstance(registry, BatchWriting)
        await registry.add_run(Run(run_id="queued", tags={"a": "1"}))
        await registry.add_run(Run(run_id="done", status=C))

        applied = await registry.write_batch(
            [
                # absent: inserted as given
                RunWrite("fresh", run=Run(run_id="fresh", status=R, tags={"t": "x"}), to=R),
                # present: falls through to the CAS, which applies
                RunWrite("queued", run=Run(run_id="queued"), to=R, expect=frozenset({Q})),
                # CAS miss: done is terminal
                RunWrite("done", to=C, expect=frozenset({R}), changes={"result": 2}),
                # field-only update of a missing run
                RunWrite("missing", changes={"progress": 0.5}),
                # field-only update of a present run, tags included
                RunWrite("queued", changes={"progress": 0.5, "tags": {"b": "2"}}),
                # the same run again, later in the batch: sees the earlier writes
                RunWrite("fresh", to=C, expect=frozenset({R}), changes={"result": [1]}),
            ]
        )

        assert applied == [True, True, False, False, True, True]
        fresh = await registry.get_run("fresh")
        assert fresh is not None
        assert (fresh.status, fresh.result, fresh.tags) == (C, [1], {"t": "x"})
        queued = await registry.get_run("queued")
        assert queued is not None
        assert (queued.status, queued.progress, queued.tags) == (R, 0.5, {"b": "2"})
        assert [r.run_id for r in await registry.list_runs(tags={"b": "2"})] == ["queued"]
        assert await registry.list_runs(tags={"a": "1"}) == []
        assert [r.run_id for r in await registry.list_runs(tags={"t": "x"})] == ["fresh"]
        assert await registry.get_run("missing") is None
        done = await registry.get_run("done")
        assert done is not None
        assert done.result is None

    async def test_new_runs_are_inserted_without_reading_first(
        self, registry: SQLRunRegistry
    ) -> None:
        await registry.count_runs()  # the schema exists
        runs = [Run(run_id=f"new-{i}", tags={"i": str(i)}) for i in range(5)]
        sent = statements(registry)
        assert (
            await registry.write_batch([RunWrite(r.run_id, stored=stored_run(r)) for r in runs])
            == [True] * 5
        )
        assert not [s for s in sent if s.lstrip().upper().startswith("SELECT")]
        assert [await registry.get_run(r.run_id) for r in runs] == runs

    async def test_empty_batch(self, registry: SQLRunRegistry) -> None:
        assert await registry.write_batch([]) == []

    async def test_unknown_field(self, registry: SQLRunRegistry) -> None:
        with pytest.raises(ValueError, match="name"):
            await registry.write_batch([RunWrite("x", changes={"name": "y"})])

    async def test_batches_keep_values_exact(self, registry: SQLRunRegistry) -> None:
        # PostgreSQL receives a batch as one JSON text; every backend must give back exactly
        # what went in, through an insert and through an update.
        plain = Run(
            run_id="plain",
            name='o\'clock "quoted" \\ ✓ 🚀',
            parameters={"n": [1, 2.5, 0.1, -0.0, 2**62, None, True], "s": "", "d": {}},
            tags={"k": '"v"'},
            timeout=1e-6,
            priority=-(2**63),
            result="null",
        )
        empty = Run(run_id="empty", result=False, progress=0.0, progress_message="")
        assert await registry.write_batch(
            [RunWrite("plain", stored=stored_run(plain)), RunWrite("empty", run=empty)]
        ) == [True, True]
        assert await registry.get_run("plain") == plain
        assert await registry.get_run("empty") == empty
        changes = {"result": {"a": [1.5, "x"]}, "error_message": "l1\nl2\t'", "progress": 1.0}
        assert await registry.write_batch(
            [
                RunWrite("plain", to=R, expect=frozenset({Q}), changes=changes),
                RunWrite("empty", to=R, expect=frozenset({Q}), changes={"result": 0}),
            ]
        ) == [True, True]
        stored = await registry.get_run("plain")
        assert stored == plain.model_copy(update={"status": R, **changes})
        stored = await registry.get_run("empty")
        assert stored == empty.model_copy(update={"status": R, "result": 0})

    async def test_nul_character_in_a_batch(self, registry: SQLRunRegistry) -> None:
        run = Run(run_id="nul", error_message="a\x00b")
        if registry.backend == "postgresql":
            with pytest.raises(ValueError, match="NUL"):
                await registry.write_batch([RunWrite("nul", stored=stored_run(run))])
            assert await registry.get_run("nul") is None
        else:
            assert await registry.write_batch([RunWrite("nul", stored=stored_run(run))]) == [True]
            assert await registry.get_run("nul") == run

    async def test_insert_race_between_two_processes(
        self, registry: SQLRunRegistry, twin: Callable[[SQLRunRegistry], Any]
    ) -> None:
        async with twin(registry) as second:
            rounds = []
            for i in range(10):
                run_id = f"race-{i}"
                write = RunWrite(
                    run_id, run=Run(run_id=run_id, status=R), to=R, expect=frozenset({Q})
                )
                rounds.append(
                    await asyncio.gather(registry.write_batch([write]), second.write_batch([write]))
                )

        for first, other in rounds:
            assert sorted([*first, *other]) == [False, True]
        assert len(await registry.list_runs()) == 10


class TestAcrossProcesses:
    """Two engines on the same tables behave like two processes sharing the registry."""

    async def test_transition_race(
        self, registry: SQLRunRegistry, twin: Callable[[SQLRunRegistry], Any]
    ) -> None:
        await registry.add_run(Run(run_id="r", status=R))

        async with twin(registry) as second:
            results = await asyncio.gather(
                *(
                    (registry, second)[i % 2].transition("r", C, owner=f"writer-{i}")
                    for i in range(20)
                )
            )

        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await registry.get_run("r") == winners[0]

    async def test_concurrent_appends_never_collide(
        self, registry: SQLRunRegistry, twin: Callable[[SQLRunRegistry], Any]
    ) -> None:
        await registry.add_run(Run(run_id="r"))

        async with twin(registry) as second:
            await asyncio.gather(
                *(
                    (registry, second)[i % 2].append_output(
                        "r", [("stdout", f"{i}a"), ("stdout", f"{i}b")]
                    )
                    for i in range(20)
                )
            )

        chunks = await registry.get_output("r")
        assert [c.seq for c in chunks] == list(range(1, 41))
        texts = [c.text for c in chunks]
        for i in range(20):  # each append's chunks are consecutive
            assert texts.index(f"{i}b") == texts.index(f"{i}a") + 1


class TestExactStrings:
    """Strings compare exactly on every database: case, accents and trailing spaces count."""

    async def test_ids_differing_in_case_and_spaces(self, registry: SQLRunRegistry) -> None:
        ids = ["run", "Run", "run ", "rün", " run"]
        for run_id in ids:
            await registry.add_run(Run(run_id=run_id, name=run_id, tags={"k": run_id}))

        for run_id in ids:
            got = await registry.get_run(run_id)
            assert got is not None
            assert got.run_id == run_id
            assert [r.run_id for r in await registry.list_runs(name=run_id)] == [run_id]
            assert [r.run_id for r in await registry.list_runs(tags={"k": run_id})] == [run_id]

    async def test_nul_character(self, registry: SQLRunRegistry) -> None:
        # Run() refuses NUL; model_validate (how records are read back) does not.
        run = Run.model_validate(
            {"run_id": "a\x00b", "name": "n\x00", "parameters": {"json": "keeps \x00"}}
        )

        if registry.backend == "postgresql":
            with pytest.raises(ValueError, match="NUL"):
                await registry.add_run(run)
            assert await registry.list_runs() == []
        else:
            await registry.add_run(run)
            assert await registry.get_run("a\x00b") == run


class TestRegistryFromURL:
    """registry_from_url builds a SQLRunRegistry for every SQL scheme."""

    @pytest.mark.parametrize(
        "url",
        [
            "sqlite+aiosqlite:///runs.db",
            "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
            "mysql+asyncmy://root@127.0.0.1:3306/test",
        ],
        ids=BACKENDS,
    )
    async def test_builds_sql_registry(self, url: str) -> None:
        registry = registry_from_url(url)

        assert isinstance(registry, SQLRunRegistry)
        assert registry.table_prefix == "runtrack_"
        scheme = url.partition("://")[0]
        assert repr(registry).startswith(f"<SQLRunRegistry {scheme}://")
        await registry.aclose()

    async def test_works_end_to_end(self, tmp_path: Path) -> None:
        async with AsyncExitStack() as stack:
            registry = registry_from_url(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
            await stack.enter_async_context(registry)
            await registry.add_run(Run(run_id="r1"))

            assert [r.run_id for r in await registry.list_runs()] == ["r1"]


class TestLifecycle:
    """aclose disposes of the engine the registry built, not of one it was given."""

    async def test_owned_engine_disposed(self, registry: SQLRunRegistry) -> None:
        await registry.count_runs()
        assert pooled(registry.engine) > 0

        await registry.aclose()
        await registry.aclose()

        assert pooled(registry.engine) == 0

    async def test_given_engine_kept(self, url: str) -> None:
        engine = create_async_engine(url)
        registry = SQLRunRegistry(engine, table_prefix=unique_prefix())
        try:
            await registry.count_runs()
            await registry.aclose()

            assert pooled(engine) > 0
            assert registry.engine is engine
        finally:
            await drop_tables(registry)
