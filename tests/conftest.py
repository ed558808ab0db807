"""Fixtures shared by runtrack's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from cli_helpers import Backend, backend_for
from redis_cluster import set_cluster_url, start_cluster
from redis_registries import REDIS_REGISTRIES, start_needed_fixtures
from registries import REGISTRIES, RegistryFactory
from runtrack import RunRegistry
from sql_registries import SQL_REGISTRIES

ALL_REGISTRIES = [*REGISTRIES, *SQL_REGISTRIES, *REDIS_REGISTRIES]


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """The ``redis+cluster://`` URL of a 3-master Redis Cluster started for the session.

    Skipped (failed on CI) without redis-server / redis-cli; stopped and deleted after.
    """
    cluster = start_cluster()
    set_cluster_url(cluster.url)
    try:
        yield cluster.url
    finally:
        set_cluster_url(None)
        cluster.stop()


@pytest_asyncio.fixture(
    params=list(ALL_REGISTRIES),
    ids=[backend for backend, _ in ALL_REGISTRIES],
)
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[RunRegistry]:
    """A fresh, empty registry of each backend in ``tests/registries.py``, closed after."""
    pair: tuple[str, RegistryFactory] = request.param
    backend, factory = pair
    start_needed_fixtures(request, backend)
    async with factory() as registry:
        yield registry


@pytest_asyncio.fixture(params=["sqlite", "postgresql", "redis"])
async def cli_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A registry the ``runtrack`` command is pointed at, on each backend it is tested on."""
    async with backend_for(request.param, tmp_path) as backend:
        yield backend


@pytest_asyncio.fixture
async def sqlite_cli(tmp_path: Path) -> AsyncIterator[Backend]:
    """A SQLite registry the ``runtrack`` command is pointed at."""
    async with backend_for("sqlite", tmp_path) as backend:
        yield backend
