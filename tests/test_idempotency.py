"""``idempotency_key``: one run per key, in one registry call, across processes."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import pytest

from helpers import SAFETY
from redis_registries import redis_prefix, redis_url
from runtrack import BackgroundTaskManager, Run, RunRegistry, RunStatus
from runtrack._models import utcnow
from runtrack.registry._idempotency import IdempotentAdding
from sql_registries import mysql_url, postgres_url, sql_registry

SUBMITS: Final = 100


def keyed(key: str, **fields: Any) -> Run:
    return Run(name="charge", idempotency_key=key, **fields)


class TestAddRunOnce:
    """The registry capability, on every backend."""

    async def test_the_first_inserts_the_next_get_it(self, registry: RunRegistry) -> None:
        assert isinstance(registry, IdempotentAdding)
        first, inserted = await registry.add_run_once(keyed("k1"), ttl=timedelta(hours=1))
        assert inserted
        again, inserted = await registry.add_run_once(keyed("k1"), ttl=timedelta(hours=1))
        assert not inserted
        assert again.run_id == first.run_id
        assert again.idempotency_key == "k1"
        other, inserted = await registry.add_run_once(keyed("k2"), ttl=timedelta(hours=1))
        assert inserted
        assert other.run_id != first.run_id
        assert sum((await registry.count_runs()).values()) == 2

    async def test_a_run_finished_longer_than_ttl_ago_frees_its_key(
        self, registry: RunRegistry
    ) -> None:
        assert isinstance(registry, IdempotentAdding)
        first, _ = await registry.add_run_once(keyed("k"), ttl=timedelta(hours=1))
        await registry.transition(first.run_id, RunStatus.RUNNING, started_at=utcnow())
        # finished within the ttl: still held
        await registry.transition(
            first.run_id, RunStatus.COMPLETED, finished_at=utcnow() - timedelta(minutes=30)
        )
        held, inserted = await registry.add_run_once(keyed("k"), ttl=timedelta(hours=1))
        assert (held.run_id, inserted) == (first.run_id, False)
        # finished longer than the ttl ago: a new run takes the key
        second, inserted = await registry.add_run_once(keyed("k"), ttl=timedelta(minutes=10))
        assert inserted
        assert second.run_id != first.run_id
        held, inserted = await registry.add_run_once(keyed("k"), ttl=timedelta(minutes=10))
        assert (held.run_id, inserted) == (second.run_id, False)

    async def test_a_deleted_run_frees_its_key(self, registry: RunRegistry) -> None:
        assert isinstance(registry, IdempotentAdding)
        first, _ = await registry.add_run_once(keyed("k"), ttl=timedelta(days=1))
        await registry.transition(first.run_id, RunStatus.CANCELLED, finished_at=utcnow())
        assert await registry.cleanup_old_runs(older_than=timedelta(0)) == 1
        second, inserted = await registry.add_run_once(keyed("k"), ttl=timedelta(days=1))
        assert inserted
        assert second.run_id != first.run_id

    async def test_a_run_without_key_is_refused(self, registry: RunRegistry) -> None:
        assert isinstance(registry, IdempotentAdding)
        with pytest.raises(ValueError, match="idempotency_key"):
            await registry.add_run_once(Run(name="x"), ttl=timedelta(hours=1))

    async def test_concurrent_calls_insert_once(self, registry: RunRegistry) -> None:
        assert isinstance(registry, IdempotentAdding)
        outcomes = await asyncio.gather(
            *(registry.add_run_once(keyed("race"), ttl=timedelta(hours=1)) for _ in range(20))
        )
        assert sum(inserted for _, inserted in outcomes) == 1
        assert len({run.run_id for run, _ in outcomes}) == 1
        assert sum((await registry.count_runs()).values()) == 1


class TestSubmit:
    """``manager.submit(..., idempotency_key=...)``."""

    async def test_an_existing_run_is_returned_without_starting_the_work(
        self, registry: RunRegistry
    ) -> None:
        calls: list[int] = []
        release = asyncio.Event()

        async def charge(amount: int) -> int:
            calls.append(amount)
            await release.wait()
            return amount

        async with BackgroundTaskManager(registry) as manager:
            first = await manager.submit(charge, 5, idempotency_key="invoice-1")
            again = await manager.submit(charge, 5, idempotency_key="invoice-1")
            assert again.run_id == first.run_id
            coro = charge(7)
            third = await manager.submit(coro, idempotency_key="invoice-1")
            assert third.run_id == first.run_id
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # never started
            release.set()
            done = await manager.wait(first.run_id, timeout=SAFETY)
            assert done.status is RunStatus.COMPLETED
            assert done.idempotency_key == "invoice-1"
            # finished, but within idempotency_ttl: still the same run
            after = await manager.submit(charge, 5, idempotency_key="invoice-1")
            assert after.run_id == first.run_id
            await manager.wait_all(timeout=SAFETY)
        assert calls == [5]
        gc.collect()  # a coroutine left unawaited would warn here (warnings are errors)

    async def test_the_ttl_option(self) -> None:
        async def work() -> None:
            return None

        async with BackgroundTaskManager(idempotency_ttl=timedelta(microseconds=1)) as manager:
            first = await manager.submit(work, idempotency_key="k")
            await manager.wait(first.run_id, timeout=SAFETY)
            deadline = time.monotonic() + SAFETY
            while True:  # the key is free as soon as the clock moved past the finish
                second = await manager.submit(work, idempotency_key="k")
                if second.run_id != first.run_id or time.monotonic() > deadline:
                    break
            assert second.run_id != first.run_id

    @pytest.mark.parametrize(
        ("key", "error"),
        [("", ValueError), ("x" * 256, ValueError), (42, TypeError), ("a\x00b", ValueError)],
    )
    async def test_a_bad_key_is_refused_and_the_coroutine_closed(
        self, key: Any, error: type[Exception]
    ) -> None:
        async def work() -> None:
            return None

        async with BackgroundTaskManager() as manager:
            coro = work()
            with pytest.raises(error, match="idempotency_key"):
                await manager.submit(coro, idempotency_key=key)
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            assert manager.get_active_task_count() == 0
            assert await manager.registry.list_runs() == []

    @pytest.mark.parametrize(
        ("ttl", "error"), [(5, TypeError), (timedelta(0), ValueError), (None, TypeError)]
    )
    def test_a_bad_ttl_is_refused(self, ttl: Any, error: type[Exception]) -> None:
        with pytest.raises(error, match="idempotency_ttl"):
            BackgroundTaskManager(idempotency_ttl=ttl)

    async def test_a_keyword_named_like_the_option_is_ambiguous(self) -> None:
        async def work(idempotency_key: str) -> str:
            return idempotency_key

        async with BackgroundTaskManager() as manager:
            with pytest.raises(TypeError, match="idempotency_key= is both"):
                await manager.submit(work, idempotency_key="k")


# -- two processes, each submitting one key 100 times at once ---------------------------------

_CHILD: Final = textwrap.dedent(
    """
    import asyncio, json, sys, time

    from runtrack import BackgroundTaskManager

    url, prefix, key, start_at, count = sys.argv[1:6]

    async def charge() -> str:
        return "charged"

    async def main() -> None:
        registry = {make}
        async with registry, BackgroundTaskManager(registry) as manager:
            await registry.count_runs()  # connected and schema ready before the start
            # Start together with the other process, so that their submits overlap.
            await asyncio.sleep(max(0.0, float(start_at) - time.time()))
            runs = await asyncio.gather(
                *(manager.submit(charge, idempotency_key=key) for _ in range(int(count)))
            )
            await manager.wait_all(timeout=60)
        print(json.dumps(sorted({{run.run_id for run in runs}})))

    asyncio.run(main())
    """
)


@asynccontextmanager
async def _postgres() -> AsyncIterator[tuple[str, str, RunRegistry]]:
    async with sql_registry(postgres_url()) as registry:
        yield postgres_url(), registry.table_prefix, registry


@asynccontextmanager
async def _mariadb() -> AsyncIterator[tuple[str, str, RunRegistry]]:
    async with sql_registry(mysql_url()) as registry:
        yield mysql_url(), registry.table_prefix, registry


@asynccontextmanager
async def _redis() -> AsyncIterator[tuple[str, str, RunRegistry]]:
    from runtrack.registry.redis import RedisRunRegistry

    async with redis_prefix() as prefix:
        registry = RedisRunRegistry(redis_url(), prefix=prefix)
        async with registry:
            yield redis_url(), prefix, registry


def _sqlite(tmp_path: Path) -> Callable[[], AbstractAsyncContextManager[tuple[str, str, Any]]]:
    @asynccontextmanager
    async def make() -> AsyncIterator[tuple[str, str, RunRegistry]]:
        url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
        async with sql_registry(url) as registry:
            yield url, registry.table_prefix, registry

    return make


_MAKERS: Final = {
    "sql": "SQLRunRegistry(url, table_prefix=prefix)",
    "redis": "RedisRunRegistry(url, prefix=prefix)",
}


@pytest.mark.parametrize("backend", ["postgresql", "mariadb", "redis", "sqlite"])
async def test_two_processes_submitting_one_key_make_one_run(backend: str, tmp_path: Path) -> None:
    factories = {"postgresql": _postgres, "mariadb": _mariadb, "redis": _redis}
    factory = factories.get(backend) or _sqlite(tmp_path)
    kind = "redis" if backend == "redis" else "sql"
    imports = (
        "from runtrack.registry.redis import RedisRunRegistry\n"
        if kind == "redis"
        else "from runtrack.registry.sql import SQLRunRegistry\n"
    )
    script = imports + _CHILD.format(make=_MAKERS[kind])
    async with factory() as (url, prefix, registry):
        start_at = time.time() + 3
        argv = [sys.executable, "-c", script, url, prefix, "order-7", str(start_at), str(SUBMITS)]
        env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
        children = [
            await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
            for _ in range(2)
        ]
        outputs = [await asyncio.wait_for(c.communicate(), SAFETY * 6) for c in children]
        for child, (_out, err) in zip(children, outputs, strict=True):
            assert child.returncode == 0, err.decode()
        seen = [json.loads(out) for out, _ in outputs]
        assert len(seen[0]) == 1
        assert seen[0] == seen[1]
        runs = await registry.list_runs(limit=1000)
        assert [run.run_id for run in runs] == seen[0]
        assert runs[0].status is RunStatus.COMPLETED
