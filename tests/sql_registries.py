"""Conformance-suite factories for the sql registries (see `registries.py`).

Every factory yields a `SQLRunRegistry` with a table prefix of its own (``rt_<random>_``),
so tests never see each other's runs, and drops its tables on exit. The server URLs come
from ``RUNTRACK_TEST_POSTGRES_URL`` and ``RUNTRACK_TEST_MYSQL_URL``, defaulting to the
servers a development machine runs on loopback; an unreachable server skips the test
locally and fails it on CI (see `registries.skip_or_fail`).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from registries import MYSQL_URL_ENV, POSTGRES_URL_ENV, RegistryFactory, skip_or_fail
from runtrack import RegistryUnavailableError, RunRegistry
from runtrack.registry.sql import SQLRunRegistry

__all__ = [
    "DEFAULT_MYSQL_URL",
    "DEFAULT_POSTGRES_URL",
    "SQL_REGISTRIES",
    "SQL_URL_FACTORIES",
    "drop_tables",
    "mysql_url",
    "postgres_url",
    "sql_registry",
    "unique_prefix",
]

DEFAULT_POSTGRES_URL: Final = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL: Final = "mysql+asyncmy://root@127.0.0.1:3306/test"


def postgres_url() -> str:
    """The PostgreSQL server the tests use."""
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


def mysql_url() -> str:
    """The MariaDB/MySQL server the tests use."""
    return os.environ.get(MYSQL_URL_ENV) or DEFAULT_MYSQL_URL


def unique_prefix() -> str:
    """A table prefix no other test uses."""
    return f"rt_{uuid.uuid4().hex[:10]}_"


async def drop_tables(registry: SQLRunRegistry) -> None:
    """Drop the registry's tables, then dispose of its engine."""
    try:
        await registry.drop_schema()
    finally:
        await registry.engine.dispose()


@asynccontextmanager
async def sql_registry(url: str, *, prefix: str | None = None) -> AsyncIterator[SQLRunRegistry]:
    """A registry on ``url`` with fresh tables, created before it is yielded and dropped after.

    Skips (or fails on CI) when the server cannot be reached.
    """
    registry = SQLRunRegistry(url, table_prefix=prefix or unique_prefix())
    try:
        await registry.count_runs()  # creates the schema, and proves the server is up
    except RegistryUnavailableError as exc:
        await registry.engine.dispose()
        skip_or_fail(f"{registry!r} is unreachable: {exc}")
    except BaseException:
        await drop_tables(registry)
        raise
    try:
        yield registry
    finally:
        await drop_tables(registry)


@asynccontextmanager
async def sqlite_registry() -> AsyncIterator[RunRegistry]:
    """A `SQLRunRegistry` on a SQLite file in a fresh temporary directory."""
    with tempfile.TemporaryDirectory(prefix="runtrack-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'runs.db'}"
        async with sql_registry(url) as registry:
            yield registry


@asynccontextmanager
async def postgres_registry() -> AsyncIterator[RunRegistry]:
    """A `SQLRunRegistry` on the test PostgreSQL server, with tables of its own."""
    async with sql_registry(postgres_url()) as registry:
        yield registry


@asynccontextmanager
async def mysql_registry() -> AsyncIterator[RunRegistry]:
    """A `SQLRunRegistry` on the test MariaDB/MySQL server, with tables of its own."""
    async with sql_registry(mysql_url()) as registry:
        yield registry


#: ``(test id, factory)`` pairs appended to `registries.REGISTRIES`.
SQL_REGISTRIES: Final[list[tuple[str, RegistryFactory]]] = [
    ("sqlite", sqlite_registry),
    ("postgresql", postgres_registry),
    ("mariadb", mysql_registry),
]

#: ``(test id, url factory)`` for SQL-specific tests; SQLite gets a temporary directory.
SQL_URL_FACTORIES: Final = [
    ("postgresql", postgres_url),
    ("mariadb", mysql_url),
]
