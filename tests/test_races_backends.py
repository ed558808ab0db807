"""The manager's races on SQLite, PostgreSQL and Redis, through the group-committing writer.

``test_manager_races.py`` steers cancel against completion, a timeout against completion,
shutdown against submit and duplicate submits on the in-memory registry. Here the same
test classes run on SQLite, PostgreSQL and Redis, where every status write goes through
the manager's `BatchWriter` and a server round trip: only the fixtures differ. Servers come from
``tests/sql_registries.py`` and ``tests/redis_registries.py`` (skipped locally, failed on
CI when unreachable); each test gets tables or a key prefix of its own.

Fewer race points than on memory keep the time reasonable: a handful of loop-iteration
counts and timeout offsets around the deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import test_manager_races as races
from helpers import ManagerFactory, manager_factory
from redis_registries import redis_cluster_registry, redis_registry, start_needed_fixtures
from registries import RegistryFactory
from runtrack import RunRegistry
from sql_registries import postgres_registry, sqlite_registry

BACKENDS: list[tuple[str, RegistryFactory]] = [
    ("sqlite", sqlite_registry),
    ("postgresql", postgres_registry),
    ("redis", redis_registry),
    ("redis-cluster", redis_cluster_registry),
]


@pytest_asyncio.fixture(params=BACKENDS, ids=[b for b, _ in BACKENDS])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RunRegistry]:
    """A fresh registry on each backend: managers write to it and the test reads it."""
    pair: tuple[str, RegistryFactory] = request.param
    backend, factory = pair
    start_needed_fixtures(request, backend)
    async with factory() as registry:
        yield registry


@pytest.fixture
async def make_manager(store: RunRegistry) -> AsyncIterator[ManagerFactory]:
    """Build managers on ``store``; every one is shut down and checked after the test."""
    async with manager_factory(store, store) as make:
        yield make


@pytest.fixture(params=[0, 1, 3, 7])
def yields(request: pytest.FixtureRequest) -> int:
    """Event-loop iterations between the two racing operations."""
    value: int = request.param
    return value


@pytest.fixture(params=[-0.002, 0.0, 0.002])
def offset(request: pytest.FixtureRequest) -> float:
    """Seconds from a run's timeout deadline to the operation racing it."""
    value: float = request.param
    return value


class TestCancelVersusCompletion(races.TestCancelVersusCompletion):
    """cancel_task and a run's own ending race on a real backend."""


class TestTimeoutVersusCompletion(races.TestTimeoutVersusCompletion):
    """A run's timeout and its completion (or a cancel) meet on a real backend."""


class TestShutdownVersusSubmit(races.TestShutdownVersusSubmit):
    """A submit racing shutdown on a real backend: refused, or ended by the shutdown."""


class TestShutdownVersusCancel(races.TestShutdownVersusCancel):
    """Shutdown against a cancel or a completion on a real backend."""


class TestDuplicateSubmits(races.TestDuplicateSubmits):
    """Concurrent submits of one id, in one manager and across managers, on a real backend."""


class TestCancelTimeout(races.TestCancelTimeout):
    """A run that ignores cancellation, recorded CANCELLED on a real backend."""
