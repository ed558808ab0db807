"""Conformance-suite factories for the redis registries (see `registries.py`).

The URL comes from ``RUNTRACK_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
Each registry gets a prefix of its own, and every key under it is deleted afterwards.

``redis-cluster`` runs on the throwaway Redis Cluster of ``redis_cluster.py``: its factory
needs the session fixture ``redis_cluster_url`` (`FACTORY_FIXTURES` says so, and the
``registry`` fixture of ``conftest.py`` requests it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final
from uuid import uuid4

import pytest

from redis_cluster import cluster_url
from registries import REDIS_URL_ENV, RegistryFactory, skip_or_fail
from runtrack import RunRegistry

__all__ = [
    "FACTORY_FIXTURES",
    "REDIS_REGISTRIES",
    "cluster_client",
    "cluster_prefix",
    "redis_cluster_registry",
    "redis_prefix",
    "redis_registry",
    "redis_url",
    "start_needed_fixtures",
]

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    """The test server's URL."""
    return os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A fresh key prefix on the test server; every key under it is deleted on exit.

    Skips (or on CI fails) the test when the redis extra is missing or the server is down.
    """
    try:
        import redis.asyncio
        import redis.exceptions
    except ImportError:
        skip_or_fail("redis-py is not installed (pip install 'runtrack[redis]')")
    url = redis_url()
    client = redis.asyncio.Redis.from_url(url)
    try:
        try:
            await client.ping()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            skip_or_fail(f"Redis at {url} is unreachable: {exc}")
        prefix = f"rt-test:{uuid4().hex}:"
        try:
            yield prefix
        finally:
            # SCAN is fine here: test clean-up only, never in the registry itself.
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            for i in range(0, len(keys), 1000):
                await client.delete(*keys[i : i + 1000])
    finally:
        await client.aclose()


@asynccontextmanager
async def redis_registry(**options: Any) -> AsyncIterator[RunRegistry]:
    """A `RedisRunRegistry` on a fresh prefix, closed and wiped on exit."""
    from runtrack.registry.redis import RedisRunRegistry

    async with redis_prefix() as prefix:
        registry = RedisRunRegistry(redis_url(), prefix=prefix, **options)
        try:
            yield registry
        finally:
            await registry.aclose()


def cluster_client() -> Any:
    """A new ``RedisCluster`` client of the session cluster (see `redis_cluster`)."""
    from redis.asyncio.cluster import RedisCluster

    return RedisCluster.from_url(cluster_url().replace("+cluster", "", 1))


async def _wipe_slot(client: Any, prefix: str) -> None:
    """Delete every key under a hash-tagged prefix: they are all in its slot."""
    _ = await client.initialize()
    slot = client.keyslot(prefix)
    node = client.get_node_from_key(prefix)
    while True:
        keys = await client.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000, target_nodes=node)
        names = [key.decode() if isinstance(key, bytes) else str(key) for key in keys]
        mine = [name for name in names if name.startswith(prefix)]
        if not mine:
            return
        await client.delete(*mine)


@asynccontextmanager
async def cluster_prefix() -> AsyncIterator[str]:
    """A fresh hash-tagged prefix on the session cluster; its keys are deleted on exit."""
    client = cluster_client()
    try:
        prefix = f"{{rt-test:{uuid4().hex}}}:"
        try:
            yield prefix
        finally:
            await _wipe_slot(client, prefix)
    finally:
        await client.aclose()


@asynccontextmanager
async def redis_cluster_registry(**options: Any) -> AsyncIterator[RunRegistry]:
    """A `RedisRunRegistry` on the session Redis Cluster, on a fresh prefix, wiped on exit.

    The registry is given a ``RedisCluster`` client of the test's, which also wipes the
    prefix: a cluster client's first command costs a few hundred ms (redis-py reads the
    server's command table), paid once per test this way.
    """
    from runtrack.registry.redis import RedisRunRegistry

    client = cluster_client()
    prefix = f"{{rt-test:{uuid4().hex}}}:"
    try:
        async with RedisRunRegistry(client, prefix=prefix, **options) as registry:
            try:
                yield registry
            finally:
                await _wipe_slot(client, prefix)
    finally:
        await client.aclose()


#: ``(test id, factory)`` pairs appended to `registries.REGISTRIES`.
REDIS_REGISTRIES: Final[list[tuple[str, RegistryFactory]]] = [
    ("redis", redis_registry),
    ("redis-cluster", redis_cluster_registry),
]

#: Test id -> the session fixture its factory needs started first.
FACTORY_FIXTURES: Final[dict[str, str]] = {"redis-cluster": "redis_cluster_url"}


def start_needed_fixtures(request: pytest.FixtureRequest, backend: str) -> None:
    """Start the session fixture the factory of ``backend`` needs (see `FACTORY_FIXTURES`)."""
    if backend in FACTORY_FIXTURES:
        request.getfixturevalue(FACTORY_FIXTURES[backend])
