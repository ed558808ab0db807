"""Fixtures shared by runtrack's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cli_helpers import Backend, backend_for
from redis_registries import REDIS_REGISTRIES
from registries import REGISTRIES, RegistryFactory
from runtrack import RunRegistry
from sql_registries import SQL_REGISTRIES

ALL_REGISTRIES = [*REGISTRIES, *SQL_REGISTRIES, *REDIS_REGISTRIES]


@pytest_asyncio.fixture(
    params=[factory for _, factory in ALL_REGISTRIES],
    ids=[backend for backend, _ in ALL_REGISTRIES],
)
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[RunRegistry]:
    """A fresh, empty registry of each backend in ``tests/registries.py``, closed after."""
    factory: RegistryFactory = request.param
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
