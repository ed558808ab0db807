"""How the registry conformance suite builds each backend's registry.

`REGISTRIES` lists ``(id, factory)`` pairs; the ``registry`` fixture in ``conftest.py`` runs
every conformance test once per pair, with the id as the test id. A factory is an async
context manager that yields a fresh registry holding no runs, isolated from every other
test, and releases it on exit.

Factories for server backends read their URL from ``RUNTRACK_TEST_REDIS_URL``,
``RUNTRACK_TEST_POSTGRES_URL`` or ``RUNTRACK_TEST_MYSQL_URL`` and call `skip_or_fail` when
the variable is unset or the server unreachable: locally the tests are skipped with the
reason, on CI (``CI`` set) they fail, so a broken service cannot pass unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final, NoReturn

import pytest

from runtrack import InMemoryRunRegistry, RunRegistry

__all__ = [
    "MYSQL_URL_ENV",
    "POSTGRES_URL_ENV",
    "REDIS_URL_ENV",
    "REGISTRIES",
    "RegistryFactory",
    "memory_registry",
    "skip_or_fail",
    "url_from_env",
]

REDIS_URL_ENV: Final = "RUNTRACK_TEST_REDIS_URL"
POSTGRES_URL_ENV: Final = "RUNTRACK_TEST_POSTGRES_URL"
MYSQL_URL_ENV: Final = "RUNTRACK_TEST_MYSQL_URL"

RegistryFactory = Callable[[], AbstractAsyncContextManager[RunRegistry]]


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason``, or fail it when running on CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so a missing backend is an error)")
    pytest.skip(reason)


def url_from_env(var: str) -> str:
    """The server URL in environment variable ``var``; skip or fail when it is unset."""
    url = os.environ.get(var)
    if not url:
        skip_or_fail(f"{var} is not set")
    return url


@asynccontextmanager
async def memory_registry() -> AsyncIterator[RunRegistry]:
    """A fresh `InMemoryRunRegistry`."""
    async with InMemoryRunRegistry() as registry:
        yield registry


#: Every backend the conformance suite runs against, as ``(test id, factory)``.
REGISTRIES: Final[list[tuple[str, RegistryFactory]]] = [
    ("memory", memory_registry),
]
