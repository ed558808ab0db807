"""Section ``postgres``: runtrack+PostgreSQL against procrastinate, and PostgreSQL's raw limit.

procrastinate runs in this process: an ``App`` with a ``PsycopgConnector``, its schema in a
PostgreSQL schema of its own (``search_path``), jobs deferred with one
``batch_defer_async`` call (its documented bulk path), then
``app.run_worker_async(concurrency=C, wait=False)``, which returns once the queue is
drained and every job's final status is written.

procrastinate's job fetch depends on the planner's statistics of ``procrastinate_jobs``:
without any (a fresh table), or with statistics taken when the table held only finished
jobs, it runs at a fraction of its speed (60-110 jobs/s here, against ~300). So the
section creates the schema once, defers ``--procrastinate-warmup`` jobs, runs ``ANALYZE``
while they are waiting ('todo'), then runs them (all untimed); measurements then use that
schema, a queue each, and leave statistics to autovacuum. ``--procrastinate-cold`` adds a
contender on a fresh schema with no statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from time import perf_counter
from typing import Any

from _harness import Check, SectionResult, log, section
from _persist import (
    RAW_CHUNK,
    RUNTRACK_START,
    Contender,
    Tags,
    add_common_arguments,
    assemble,
    chunks,
    missing,
    per_op_check,
    ratio_check,
    raw_contenders,
    raw_row,
    reachable,
    run_all,
    runtrack_contenders,
    time_limit,
    versions,
)

PROCRASTINATE = "procrastinate"
PROCRASTINATE_COLD = "procrastinate, fresh table, no ANALYZE"
RAW_UNNEST = f"unnest upsert ({RAW_CHUNK:,} rows per statement)"
RAW_SINGLE = "INSERT, one row per statement"
#: procrastinate's connection pool: PostgreSQL allows 100 clients here, shared with others.
PROCRASTINATE_POOL = 20


def plain_dsn(url: str) -> str:
    """``postgresql+asyncpg://...`` -> ``postgresql://...`` (for asyncpg and psycopg)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql{sep}{rest}" if scheme.startswith("postgres") else url


def sqlalchemy_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return url if "+" in scheme else f"postgresql+asyncpg{sep}{rest}"


async def connect(dsn: str) -> Any:
    import asyncpg

    return await asyncpg.connect(dsn)


async def drop_tables(dsn: str, prefix: str) -> int:
    """Drop every table of schema ``public`` whose name starts with ``prefix``."""
    conn = await connect(dsn)
    try:
        names = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND starts_with(tablename, $1)",
            prefix,
        )
        for (name,) in names:
            await conn.execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
        return len(names)
    finally:
        await conn.close()


async def drop_schemas(dsn: str, prefix: str) -> int:
    conn = await connect(dsn)
    try:
        names = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)", prefix
        )
        for (name,) in names:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        return len(names)
    finally:
        await conn.close()


# -- procrastinate ----------------------------------------------------------------------------


def make_app(dsn: str, schema: str) -> tuple[Any, Any]:
    import procrastinate

    connector = procrastinate.PsycopgConnector(
        conninfo=dsn,
        kwargs={"options": f"-c search_path={schema}"},
        min_size=4,
        max_size=PROCRASTINATE_POOL,
    )
    app = procrastinate.App(connector=connector)

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app, noop


async def prepare_schema(dsn: str, schema: str, warm: int, concurrency: int) -> None:
    """Create procrastinate's schema in ``schema``; defer ``warm`` jobs, ANALYZE, run them."""
    conn = await connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        app, noop = make_app(dsn, schema)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            if warm:
                await noop.configure(queue="warmup").batch_defer_async(*({} for _ in range(warm)))
                # Statistics taken while jobs wait: taken after they ran, they describe a
                # table without 'todo' rows and procrastinate is as slow as with none.
                await conn.execute(f'ANALYZE "{schema}".procrastinate_jobs')
                await app.run_worker_async(
                    queues=["warmup"],
                    concurrency=concurrency,
                    wait=False,
                    install_signal_handlers=False,
                )
    finally:
        await conn.close()


async def run_procrastinate(
    dsn: str,
    schema: str | None,
    tags: Tags,
    n: int,
    concurrency: int,
    extras: list[dict[str, Any]],
) -> float:
    """One measurement; ``schema=None``: on a fresh schema without statistics (cold)."""
    tag = tags.next()
    cold = schema is None
    if schema is None:
        schema = f"{tag}_cold"
        await prepare_schema(dsn, schema, 0, concurrency)
    conn = await connect(dsn)
    try:
        app, noop = make_app(dsn, schema)
        async with app.open_async():
            async with asyncio.timeout(time_limit(n)):
                start = perf_counter()
                await noop.configure(queue=tag).batch_defer_async(*({} for _ in range(n)))
                enqueued = perf_counter() - start
                await app.run_worker_async(
                    queues=[tag],
                    concurrency=concurrency,
                    wait=False,
                    install_signal_handlers=False,
                )
                elapsed = perf_counter() - start
        counts = dict(
            await conn.fetch(
                f'SELECT status::text, count(*) FROM "{schema}".procrastinate_jobs '
                "WHERE queue_name = $1 GROUP BY status",
                tag,
            )
        )
        if counts.get("succeeded") != n or sum(counts.values()) != n:
            raise RuntimeError(f"procrastinate left {counts} instead of {n} succeeded jobs")
        extras.append({"enqueue_s": enqueued, "total_s": elapsed})
        return elapsed
    finally:
        await conn.close()
        if cold:
            await drop_schemas(dsn, schema)


# -- the raw write limit ----------------------------------------------------------------------

RAW_DDL = """
CREATE TABLE "{table}" (
    run_id text PRIMARY KEY, name text NOT NULL, status text NOT NULL,
    created_at bigint NOT NULL, started_at bigint, finished_at bigint,
    parameters jsonb NOT NULL, tags jsonb NOT NULL, priority integer NOT NULL,
    attempt integer NOT NULL, max_attempts integer NOT NULL, owner text
)
"""

UNNEST_UPSERT = """
INSERT INTO "{table}" AS t (run_id, name, status, created_at, started_at, finished_at,
                            parameters, tags, priority, attempt, max_attempts, owner)
SELECT r, n, s, c, st, f, p::jsonb, tg::jsonb, pr, a, ma, o
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
            $7::text[], $8::text[], $9::integer[], $10::integer[], $11::integer[], $12::text[])
     AS u(r, n, s, c, st, f, p, tg, pr, a, ma, o)
ON CONFLICT (run_id) DO UPDATE SET status = excluded.status,
    started_at = excluded.started_at, finished_at = excluded.finished_at
"""

SINGLE_INSERT = """
INSERT INTO "{table}" (run_id, name, status, created_at, started_at, finished_at,
                       parameters, tags, priority, attempt, max_attempts, owner)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, $11, $12)
"""


async def raw_unnest(dsn: str, tag: str, n: int) -> float:
    rows = [raw_row(i, tag) for i in range(n)]
    table = f"{tag}_raw"
    conn = await connect(dsn)
    try:
        await conn.execute(RAW_DDL.format(table=table))
        statement = UNNEST_UPSERT.format(table=table)
        start = perf_counter()
        for part in chunks(rows, RAW_CHUNK):
            await conn.execute(statement, *(list(column) for column in zip(*part, strict=True)))
        return perf_counter() - start
    finally:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.close()


async def raw_single(dsn: str, tag: str, n: int) -> float:
    rows = [raw_row(i, tag) for i in range(n)]
    table = f"{tag}_raw"
    conn = await connect(dsn)
    try:
        await conn.execute(RAW_DDL.format(table=table))
        statement = SINGLE_INSERT.format(table=table)
        start = perf_counter()
        for row in rows:
            await conn.execute(statement, *row)
        return perf_counter() - start
    finally:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.close()


# -- the section ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    group = parser.add_argument_group("postgres")
    group.add_argument(
        "--procrastinate-warmup",
        type=int,
        default=1_000,
        help="jobs deferred into procrastinate's fresh schema, ANALYZEd and run before timing",
    )
    group.add_argument(
        "--procrastinate-cold",
        action="store_true",
        help="also time procrastinate on a fresh schema without statistics",
    )


def available(args: argparse.Namespace) -> str | None:
    gone = missing("asyncpg", "sqlalchemy")
    if gone:
        return f"{', '.join(gone)} missing: pip install -e '.[sql]'"
    return reachable(plain_dsn(args.postgres_url), 5432, "PostgreSQL")


@section(
    "postgres",
    "PostgreSQL: runtrack+PostgreSQL vs procrastinate; raw unnest-upsert limit",
    add_arguments=add_arguments,
    available=available,
)
def run(args: argparse.Namespace) -> SectionResult:
    from runtrack.registry.sql import SQLRunRegistry

    url = sqlalchemy_url(args.postgres_url)
    dsn = plain_dsn(args.postgres_url)
    n: int = args.persist_n
    conc: int = args.persist_concurrency
    tags = Tags("p")

    def make_registry(tag: str) -> SQLRunRegistry:
        return SQLRunRegistry(url, table_prefix=f"{tag}_")

    async def cleanup(tag: str) -> None:
        await drop_tables(dsn, f"{tag}_")

    contenders = runtrack_contenders(make_registry, cleanup, tags, n, conc)
    skipped: list[str] = []
    schema = f"{tags.base}pc"
    notes_extra: list[str] = []
    gone = missing("procrastinate", "psycopg", "psycopg_pool")
    if gone:
        skipped.append(
            f"{PROCRASTINATE}: not measured, {', '.join(gone)} not installed "
            "(pip install -e '.[bench]')"
        )
    else:
        log(f"  [postgres] preparing procrastinate schema {schema}...", quiet=args.quiet)
        started = perf_counter()
        asyncio.run(prepare_schema(dsn, schema, args.procrastinate_warmup, conc))
        notes_extra.append(
            "procrastinate warm-up (untimed, "
            f"{perf_counter() - started:.1f}s): its schema created once for the section, "
            f"{args.procrastinate_warmup:,} jobs deferred, ANALYZE while they wait, then run. "
            "Without statistics, or with statistics taken when the table held only finished "
            "jobs, procrastinate fetches jobs several times slower (60-110 jobs/s here); "
            "--procrastinate-cold times that case. Each measurement uses a queue of its own "
            "in that schema, whose table keeps earlier measurements' jobs (procrastinate's "
            "default); autovacuum may re-analyze it."
        )
        extras: list[dict[str, Any]] = []
        contenders.append(
            Contender(
                PROCRASTINATE,
                "peer",
                n,
                measure=functools.partial(run_procrastinate, dsn, schema, tags, n, conc, extras),
                warmup=functools.partial(
                    run_procrastinate, dsn, schema, tags, min(n, 500), conc, []
                ),
                extras=extras,
            )
        )
        if args.procrastinate_cold:
            cold: list[dict[str, Any]] = []
            contenders.append(
                Contender(
                    PROCRASTINATE_COLD,
                    "peer",
                    n,
                    measure=functools.partial(run_procrastinate, dsn, None, tags, n, conc, cold),
                    extras=cold,
                )
            )
    contenders += raw_contenders(
        tags,
        n,
        (RAW_UNNEST, functools.partial(raw_unnest, dsn)),
        (RAW_SINGLE, functools.partial(raw_single, dsn)),
    )

    try:
        samples = run_all(contenders, args.persist_repeat, quiet=args.quiet)
    finally:
        if not gone:
            asyncio.run(drop_schemas(dsn, schema))
        left = asyncio.run(_sweep(dsn, tags.base))
        if left:
            log(f"  [postgres] dropped {left} leftover tables/schemas", quiet=args.quiet)

    def checks(rows: dict[str, dict[str, Any]]) -> list[Check]:
        return [
            ratio_check(rows, RUNTRACK_START, PROCRASTINATE, 20),
            per_op_check(rows, RUNTRACK_START, RAW_UNNEST),
        ]

    return assemble(
        args,
        contenders,
        samples,
        title="runtrack+PostgreSQL vs procrastinate",
        checks=checks,
        notes=[
            f"PostgreSQL at {_safe(dsn)}; runtrack: SQLRunRegistry(url, table_prefix=<unique>), "
            "tables dropped after each measurement.",
            "procrastinate: App(PsycopgConnector(pool max_size="
            f"{PROCRASTINATE_POOL})), jobs deferred with one batch_defer_async() call (the "
            "clock includes it), then run_worker_async(concurrency="
            f"{conc}, wait=False) drains the queue; every job must then be 'succeeded'. The "
            "schema (tables, functions, triggers) is dropped at the end.",
            *notes_extra,
            "Raw: asyncpg, a 12-column runs-like table (text primary key, two jsonb); "
            f"multi-row INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE, {RAW_CHUNK:,} "
            "rows per statement, each its own transaction; single = one INSERT per row, "
            "autocommit.",
            "Versions: " + versions("asyncpg", "sqlalchemy", "procrastinate", "psycopg"),
            *skipped,
        ],
        data={"postgres_url": _safe(dsn), "skipped": skipped},
    )


def _safe(dsn: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn


async def _sweep(dsn: str, base: str) -> int:
    return await drop_tables(dsn, base) + await drop_schemas(dsn, base)
