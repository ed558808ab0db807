"""Section ``mariadb``: runtrack+MariaDB (or MySQL) against the server's raw write limit.

No peer here: none of the Python job libraries compared elsewhere keeps its jobs in
MariaDB. The raw limit is asyncmy's ``executemany`` of a multi-row
``INSERT ... ON DUPLICATE KEY UPDATE`` (asyncmy rewrites it into one statement per call).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from time import perf_counter
from typing import Any
from urllib.parse import unquote, urlsplit

from _harness import Check, SectionResult, log, section
from _persist import (
    RAW_CHUNK,
    RAW_COLUMNS,
    RUNTRACK_START,
    Tags,
    add_common_arguments,
    assemble,
    chunks,
    missing,
    per_op_check,
    raw_contenders,
    raw_row,
    reachable,
    run_all,
    runtrack_contenders,
    versions,
)

RAW_MANY = f"executemany upsert ({RAW_CHUNK:,} rows per statement)"
RAW_SINGLE = "INSERT, one row per statement"


def sqlalchemy_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return url if "+" in scheme else f"mysql+asyncmy{sep}{rest}"


async def connect(url: str) -> Any:
    import asyncmy

    parts = urlsplit(url)
    return await asyncmy.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        db=parts.path.lstrip("/") or "test",
        autocommit=True,
    )


async def drop_tables(url: str, prefix: str) -> int:
    conn = await connect(url)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND LEFT(table_name, %s) = %s",
                (len(prefix), prefix),
            )
            names = [row[0] for row in await cur.fetchall()]
            if names:
                await cur.execute("SET FOREIGN_KEY_CHECKS = 0")
                for name in names:
                    await cur.execute(f"DROP TABLE IF EXISTS `{name}`")
                await cur.execute("SET FOREIGN_KEY_CHECKS = 1")
        return len(names)
    finally:
        conn.close()


RAW_DDL = (
    "CREATE TABLE `{table}` (run_id VARCHAR(191) PRIMARY KEY, name VARCHAR(191) NOT NULL, "
    "status VARCHAR(16) NOT NULL, created_at BIGINT NOT NULL, started_at BIGINT, "
    "finished_at BIGINT, parameters JSON NOT NULL, tags JSON NOT NULL, priority INT NOT NULL, "
    "attempt INT NOT NULL, max_attempts INT NOT NULL, owner TEXT) "
    "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
)
RAW_UPSERT = (
    f"INSERT INTO `{{table}}` ({', '.join(RAW_COLUMNS)}) VALUES ({', '.join(['%s'] * 12)}) "
    "ON DUPLICATE KEY UPDATE status = VALUES(status), started_at = VALUES(started_at), "
    "finished_at = VALUES(finished_at)"
)
RAW_INSERT = f"INSERT INTO `{{table}}` ({', '.join(RAW_COLUMNS)}) VALUES ({', '.join(['%s'] * 12)})"


async def raw_executemany(url: str, tag: str, n: int) -> float:
    rows = [raw_row(i, tag) for i in range(n)]
    table = f"{tag}_raw"
    conn = await connect(url)
    try:
        async with conn.cursor() as cur:
            await cur.execute(RAW_DDL.format(table=table))
            statement = RAW_UPSERT.format(table=table)
            start = perf_counter()
            for part in chunks(rows, RAW_CHUNK):
                await cur.executemany(statement, part)  # autocommit: one transaction each
            return perf_counter() - start
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        conn.close()


async def raw_single(url: str, tag: str, n: int) -> float:
    rows = [raw_row(i, tag) for i in range(n)]
    table = f"{tag}_raw"
    conn = await connect(url)
    try:
        async with conn.cursor() as cur:
            await cur.execute(RAW_DDL.format(table=table))
            statement = RAW_INSERT.format(table=table)
            start = perf_counter()
            for row in rows:
                await cur.execute(statement, row)
            return perf_counter() - start
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        conn.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def available(args: argparse.Namespace) -> str | None:
    gone = missing("asyncmy", "sqlalchemy")
    if gone:
        return f"{', '.join(gone)} missing: pip install -e '.[sql]'"
    return reachable(args.mariadb_url, 3306, "MariaDB/MySQL")


@section(
    "mariadb",
    "MariaDB: runtrack+MariaDB vs the raw executemany limit",
    add_arguments=add_arguments,
    available=available,
)
def run(args: argparse.Namespace) -> SectionResult:
    from runtrack.registry.sql import SQLRunRegistry

    url = sqlalchemy_url(args.mariadb_url)
    n: int = args.persist_n
    conc: int = args.persist_concurrency
    tags = Tags("m")

    def make_registry(tag: str) -> SQLRunRegistry:
        return SQLRunRegistry(url, table_prefix=f"{tag}_")

    async def cleanup(tag: str) -> None:
        await drop_tables(url, f"{tag}_")

    contenders = [
        *runtrack_contenders(make_registry, cleanup, tags, n, conc),
        *raw_contenders(
            tags,
            n,
            (RAW_MANY, functools.partial(raw_executemany, url)),
            (RAW_SINGLE, functools.partial(raw_single, url)),
        ),
    ]
    try:
        samples = run_all(contenders, args.persist_repeat, quiet=args.quiet)
    finally:
        left = asyncio.run(drop_tables(url, tags.base))
        if left:
            log(f"  [mariadb] dropped {left} leftover tables", quiet=args.quiet)

    def checks(rows: dict[str, dict[str, Any]]) -> list[Check]:
        return [per_op_check(rows, RUNTRACK_START, RAW_MANY)]

    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 3306}{parts.path}"
    return assemble(
        args,
        contenders,
        samples,
        title="runtrack+MariaDB",
        checks=checks,
        notes=[
            f"MariaDB/MySQL at {where}; runtrack: SQLRunRegistry(url, table_prefix=<unique>), "
            "tables dropped after each measurement. No peer: the job libraries compared in "
            "the other sections do not store jobs in MariaDB.",
            "Raw: asyncmy, a 12-column InnoDB runs-like table (VARCHAR primary key, two JSON); "
            f"executemany of INSERT ... ON DUPLICATE KEY UPDATE, {RAW_CHUNK:,} rows per call "
            "(one multi-row statement, autocommit); single = one INSERT per row, autocommit.",
            "Versions: " + versions("asyncmy", "sqlalchemy"),
        ],
        data={"mariadb": where},
    )
