"""A manager paused past its lease (SIGSTOP, then SIGCONT) in a child process.

A survivor in the test process sweeps it while it is stopped. Once it runs again, the
child must learn it was declared dead, leave the records as the survivor wrote them (no
queued run started, no result written over FAILED), log each discarded result once, and
register again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from helpers import SAFETY
from redis_registries import redis_prefix, redis_url
from runtrack import RunRegistry, RunStatus
from runtrack._models import utcnow
from runtrack.registry.base import ManagerPresence
from sql_registries import postgres_url, sql_registry

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")

#: Seconds a child Python process may take to import runtrack and start its runs.
CHILD_START = 60.0
LEASE = 1.0
SHORT = 2.0  # the run that ends while the child is stopped

_CHILD = textwrap.dedent(
    f"""
    import asyncio, json, logging, sys
    import structlog
    from runtrack import BackgroundTaskManager, RunStatus

    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )

    def registry():
        kind, url, prefix = sys.argv[1:4]
        if kind == "sql":
            from runtrack.registry.sql import SQLRunRegistry
            return SQLRunRegistry(url, table_prefix=prefix)
        from runtrack.registry.redis import RedisRunRegistry
        return RedisRunRegistry(url, prefix=prefix)

    async def short():
        await asyncio.sleep({SHORT})
        return "late"

    async def queued(label):
        print(json.dumps({{"started": label}}), flush=True)
        await asyncio.sleep(0.1)

    async def main():
        manager = BackgroundTaskManager(
            registry(), owner="paused", heartbeat_interval=0.1, lease={LEASE},
            poll_interval=0.1, max_concurrency=2,
        )
        running = set()
        ready = asyncio.Event()

        def seen(event):
            if event.status is RunStatus.RUNNING:
                running.add(event.run_id)
                if len(running) == 2:
                    ready.set()

        manager.add_listener(seen)
        async with manager:
            ids = {{"short": (await manager.submit(short, name="short")).run_id}}
            ids["long"] = (await manager.submit(asyncio.sleep, 3600, name="long")).run_id
            for name in ("queued-1", "queued-2"):
                ids[name] = (await manager.submit(queued, name, name=name)).run_id
            await ready.wait()
            await manager._writer.flush()
            print(json.dumps({{"ready": ids}}), flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@asynccontextmanager
async def _postgres() -> AsyncIterator[tuple[RunRegistry, list[str]]]:
    async with sql_registry(postgres_url()) as registry:
        yield registry, ["sql", postgres_url(), registry.table_prefix]


@asynccontextmanager
async def _redis() -> AsyncIterator[tuple[RunRegistry, list[str]]]:
    from runtrack.registry.redis import RedisRunRegistry

    async with redis_prefix() as prefix, RedisRunRegistry(redis_url(), prefix=prefix) as registry:
        yield registry, ["redis", redis_url(), prefix]


BACKENDS: dict[str, Callable[[], AbstractAsyncContextManager[tuple[RunRegistry, list[str]]]]] = {
    "postgresql": _postgres,
    "redis": _redis,
}


class _Lines:
    """The child's stdout, one JSON object per line."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.seen: list[dict[str, Any]] = []

    async def until(
        self, found: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                line = await self.stream.readline()
                assert line, f"the child ended; it said: {self.seen}"
                try:
                    item: dict[str, Any] = json.loads(line)
                except ValueError:
                    continue
                self.seen.append(item)
                if found(item):
                    return item


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_a_paused_manager_leaves_the_survivors_records(backend: str) -> None:
    async with BACKENDS[backend]() as (registry, args):
        assert isinstance(registry, ManagerPresence)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert child.stdout is not None
            lines = _Lines(child.stdout)
            ids: dict[str, str] = (await lines.until(lambda i: "ready" in i, CHILD_START))["ready"]
            started = time.monotonic()
            os.kill(child.pid, signal.SIGSTOP)

            # The survivor: sweeps the child once its own lease has run out.
            async with asyncio.timeout(SAFETY):
                while True:
                    swept = await registry.interrupt_dead_managers(utcnow(), "survivor")
                    if swept:
                        break
                    await asyncio.sleep(0.05)
            assert {s.run_id: s.status for s in swept} == {
                ids["short"]: RunStatus.FAILED,
                ids["long"]: RunStatus.FAILED,
                ids["queued-1"]: RunStatus.CANCELLED,
                ids["queued-2"]: RunStatus.CANCELLED,
            }
            written = {name: await registry.get_run(run_id) for name, run_id in ids.items()}
            assert await registry.list_managers() == []
            # Stopped for longer than the short run takes: it ends as soon as it runs again.
            await asyncio.sleep(max(0.0, SHORT + 0.5 - (time.monotonic() - started)))
            os.kill(child.pid, signal.SIGCONT)

            # Both, in either order: the short run's refused write, the heartbeat's answer.
            wanted = {"manager_declared_dead", "result_discarded"}

            def both(_: dict[str, Any]) -> bool:
                return wanted <= {i.get("event") for i in lines.seen}

            await lines.until(both, SAFETY)
            (discarded,) = [i for i in lines.seen if i.get("event") == "result_discarded"]
            assert discarded["run_id"] == ids["short"]
            async with asyncio.timeout(SAFETY):  # registered again, and beating
                while True:
                    managers = await registry.list_managers()
                    if [m for m in managers if m.owner == "paused" and m.running == 0]:
                        break
                    await asyncio.sleep(0.05)
            (again,) = await registry.list_managers()
            assert again.owner == "paused"
        finally:
            child.kill()
            await child.wait()
        assert child.stdout is not None
        rest = await child.stdout.read()
        for line in rest.splitlines():
            try:
                lines.seen.append(json.loads(line))
            except ValueError:
                continue
        # The records stay as the survivor wrote them.
        for name, run_id in ids.items():
            assert await registry.get_run(run_id) == written[name], name
        assert not [i for i in lines.seen if "started" in i]  # no queued run started
        events = [i.get("event") for i in lines.seen]
        assert events.count("result_discarded") == 1
