"""Fixtures shared by runtrack's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

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
