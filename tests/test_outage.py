"""A real registry server goes away mid-flight: runs keep executing and nothing is lost.

The server is reached through a loopback TCP proxy the test cuts for a few seconds while
hundreds of runs are in flight; afterwards every run's final record is checked directly on
the server (not through the proxy).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from structlog.testing import capture_logs

from helpers import Gate, wait_event, wait_until
from registries import skip_or_fail
from runtrack import (
    BackgroundTaskManager,
    RegistryUnavailableError,
    Run,
    RunRegistry,
    RunStatus,
)
from runtrack.registry.base import ManagerPresence
from tcp_proxy import TcpProxy, tcp_proxy

RUNS = 300


def _redis_url() -> str:
    return os.environ.get("RUNTRACK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _postgres_url() -> str:
    return os.environ.get(
        "RUNTRACK_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    )


def _through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    return parts._replace(netloc=netloc_new).geturl()


@asynccontextmanager
async def _redis_pair() -> AsyncIterator[tuple[RunRegistry, RunRegistry, TcpProxy]]:
    """(registry through the proxy, registry direct to the server, proxy)."""
    pytest.importorskip("redis")
    from runtrack.registry.redis import RedisRunRegistry

    url = _redis_url()
    parts = urlsplit(url)
    prefix = f"rt-outage:{uuid.uuid4().hex}:"
    direct = RedisRunRegistry(url, prefix=prefix)
    try:
        await direct.count_runs()
    except RegistryUnavailableError as exc:
        await direct.aclose()
        skip_or_fail(f"Redis at {parts.hostname}:{parts.port} unreachable: {exc}")
    async with tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        proxied = RedisRunRegistry(_through(url, proxy), prefix=prefix)
        try:
            yield proxied, direct, proxy
        finally:
            await proxied.aclose()
            client: Any = direct._client  # test cleanup only: delete this test's keys
            keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            await direct.aclose()


@asynccontextmanager
async def _postgres_pair() -> AsyncIterator[tuple[RunRegistry, RunRegistry, TcpProxy]]:
    pytest.importorskip("sqlalchemy")
    from runtrack.registry.sql import SQLRunRegistry

    url = _postgres_url()
    parts = urlsplit(url)
    table_prefix = f"rt_outage_{uuid.uuid4().hex[:10]}_"
    direct = SQLRunRegistry(url, table_prefix=table_prefix)
    try:
        await direct.count_runs()
    except RegistryUnavailableError as exc:
        await direct.aclose()
        skip_or_fail(f"PostgreSQL at {parts.hostname}:{parts.port} unreachable: {exc}")
    async with tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        proxied = SQLRunRegistry(_through(url, proxy), table_prefix=table_prefix)
        try:
            yield proxied, direct, proxy
        finally:
            await proxied.aclose()
            await direct.drop_schema()
            await direct.aclose()


PAIRS = {"redis": _redis_pair, "postgresql": _postgres_pair}


@pytest.mark.parametrize("backend", sorted(PAIRS))
async def test_runs_survive_a_registry_outage(backend: str) -> None:
    async with PAIRS[backend]() as (proxied, direct, proxy):
        started = finished = 0
        half_started = asyncio.Event()
        all_finished = asyncio.Event()

        async def work(i: int) -> int:
            nonlocal started, finished
            started += 1
            if started == RUNS // 2:
                half_started.set()
            await asyncio.sleep(0.005 * (i % 7))  # the work itself: runs overlap
            finished += 1
            if finished == RUNS:
                all_finished.set()
            return i

        async with BackgroundTaskManager(
            proxied, max_concurrency=50, registry_timeout=0.5, shutdown_grace=30
        ) as manager:
            ids = [manager.start_task(Run(name="outage"), work(i)) for i in range(RUNS)]
            await asyncio.wait_for(half_started.wait(), 10)
            proxy.cut()
            with pytest.raises(RegistryUnavailableError, match=backend):
                await manager.submit(work, -1)
            # Nothing waits for the registry: every run executes to its end while it is away.
            await wait_event(all_finished, timeout=30)
            proxy.restore()
            await manager.wait_all(timeout=30)

        for i, run_id in enumerate(ids):
            run = await direct.get_run(run_id)
            assert run is not None, f"run {i} was lost"
            assert run.status is RunStatus.COMPLETED, (i, run.status)
            assert run.result == i
            assert run.started_at is not None
            assert run.finished_at is not None
        counts = await direct.count_runs()
        assert counts[RunStatus.COMPLETED] == RUNS
        assert counts[RunStatus.QUEUED] == counts[RunStatus.RUNNING] == 0
        # The submit that gave up is recorded CANCELLED, never left QUEUED with no one to run it.
        assert counts[RunStatus.CANCELLED] == 1
        (refused,) = await direct.list_runs(status=RunStatus.CANCELLED)
        assert refused.error_type == "RegistryUnavailableError"


@pytest.mark.parametrize("backend", sorted(PAIRS))
async def test_heartbeats_and_lease_checks_ride_out_an_outage(backend: str) -> None:
    """While the registry is down heartbeats and lease checks fail, are logged, and go on."""
    async with PAIRS[backend]() as (proxied, direct, proxy):

        async def heartbeat_of(run_id: str) -> object:
            # Liveness is the manager's row, not the run's record.
            assert isinstance(direct, ManagerPresence)
            return next(
                (m.heartbeat_at for m in await direct.list_managers() if m.owner == "owner"),
                None,
            )

        gate = Gate()
        with capture_logs() as logs:
            async with BackgroundTaskManager(
                proxied, owner="owner", heartbeat_interval=0.05, lease=0.3, registry_timeout=0.5
            ) as manager:
                run = await manager.submit(gate.body, name="long")
                await wait_event(gate.started)
                beats: list[object] = []

                async def beat_seen() -> bool:
                    beats.append(await heartbeat_of(run.run_id))
                    return beats[-1] is not None

                await _until(beat_seen)
                proxy.cut()

                def failed(event: str) -> bool:
                    return any(e["event"] == event for e in logs)

                # Both background checks meet the outage, are logged, and nothing crashes.
                await wait_until(lambda: failed("heartbeat_failed"), timeout=30)
                await wait_until(lambda: failed("lease_check_failed"), timeout=30)
                assert manager.is_task_active(run.run_id)
                assert not gate.cancelled.is_set()
                before = await heartbeat_of(run.run_id)

                proxy.restore()

                # Heartbeats resume: the record's heartbeat moves on past the outage.
                async def beating_again() -> bool:
                    return await heartbeat_of(run.run_id) != before

                await _until(beating_again)
                assert manager.is_task_active(run.run_id)
                gate.open("survived")
                finished = await manager.wait(run.run_id, timeout=30)
        assert (finished.status, finished.result) == (RunStatus.COMPLETED, "survived")
        recorded = await direct.get_run(run.run_id)
        assert recorded is not None
        assert (recorded.status, recorded.error_type) == (RunStatus.COMPLETED, None)
        assert not [e for e in logs if e["log_level"] == "critical"]


async def _until(condition: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    """Poll an async ``condition`` until it is true; fail the test after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)
