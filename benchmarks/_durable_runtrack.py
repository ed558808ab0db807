"""runtrack's kit in the ``durable`` section: durable tasks on PostgreSQL or Redis.

Worker: ``BackgroundTaskManager(registry, max_concurrency=C)`` that registered the tasks
``noop`` and ``stamp`` with ``@manager.task(name=...)``; it claims queued runs of those names
from the registry (woken by NOTIFY / pub/sub). Client: ``await noop.submit_many([((), {})]
* n)`` (one round trip), and a second registry instance counting COMPLETED runs.

In the same process (mode "in-process") the client submits through the worker's own
manager; from another process it submits through a manager that registered the names
without running them (`submitter`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from _durable_kits import serve, stamp
from persist_postgres import drop_tables, plain_dsn, sqlalchemy_url
from persist_redis import delete_matching
from runtrack import BackgroundTaskManager, RunRegistry, RunStatus


async def noop() -> None:
    return None


async def stamp_run(index: int) -> None:
    stamp(index)


@dataclass
class Tasks:
    """The durable tasks a manager registered."""

    manager: BackgroundTaskManager
    noop: Any
    stamp: Any


def register(manager: BackgroundTaskManager) -> Tasks:
    return Tasks(
        manager,
        manager.task(name="noop")(noop),
        manager.task(name="stamp")(stamp_run),
    )


@asynccontextmanager
async def submitter(registry: RunRegistry) -> AsyncIterator[Tasks]:
    """A manager that submits durable runs but never claims them (another process runs them).

    The tasks are registered with ``run_here=False``: ``submit`` records and announces
    the runs, and this manager's claim loop has no task names to claim.
    """
    manager = BackgroundTaskManager(registry, max_concurrency=1)
    try:
        yield Tasks(
            manager,
            manager.task(name="noop", run_here=False)(noop),
            manager.task(name="stamp", run_here=False)(stamp_run),
        )
    finally:
        await manager.shutdown()


@dataclass
class RuntrackKit:
    store_name: str  # "postgres" or "redis"
    url: str
    #: The tasks of the worker running in this process, by tag (mode "in-process").
    local: ClassVar[dict[str, Tasks]] = {}

    @property
    def name(self) -> str:
        return f"runtrack-{self.store_name}"

    def registry(self, tag: str) -> RunRegistry:
        if self.store_name == "postgres":
            from runtrack.registry.sql import SQLRunRegistry

            return SQLRunRegistry(sqlalchemy_url(self.url), table_prefix=f"{tag}_")
        from runtrack.registry.redis import RedisRunRegistry

        return RedisRunRegistry(self.url, prefix=f"{tag}:")

    async def setup(self, tag: str) -> None:
        registry = self.registry(tag)
        try:
            await registry.count_runs()  # connects and creates the schema
        finally:
            await registry.aclose()

    async def teardown(self, tag: str) -> None:
        if self.store_name == "postgres":
            await drop_tables(plain_dsn(self.url), f"{tag}_")
        else:
            await delete_matching(self.url, f"{tag}:*")

    async def worker(
        self, tag: str, concurrency: int, ready: asyncio.Event, stop: asyncio.Event
    ) -> None:
        registry = self.registry(tag)
        manager = BackgroundTaskManager(registry, max_concurrency=concurrency)
        self.local[tag] = register(manager)
        try:
            async with manager:  # started: it claims the runs of its tasks
                await serve(ready, stop)
        finally:
            del self.local[tag]
            await registry.aclose()

    @asynccontextmanager
    async def client(self, tag: str) -> AsyncIterator[RuntrackClient]:
        reader = self.registry(tag)
        try:
            local = self.local.get(tag)
            if local is not None:
                yield RuntrackClient(local, reader)
            else:
                async with submitter(self.registry(tag)) as tasks:
                    try:
                        yield RuntrackClient(tasks, reader)
                    finally:
                        await tasks.manager.registry.aclose()
        finally:
            await reader.aclose()


@dataclass
class RuntrackClient:
    tasks: Tasks
    reader: RunRegistry
    expected: int = 0

    async def enqueue(self, n: int) -> None:
        runs = await self.tasks.noop.submit_many([((), {})] * n)
        self.expected += len(runs)

    async def remaining(self) -> int:
        # The tag's tables / keys hold only this round's runs: no name filter needed (on
        # Redis, a filtered count intersects sets, costing the store milliseconds a poll).
        counts = await self.reader.count_runs()
        bad = {
            s.value: k
            for s, k in counts.items()
            if k and s in {RunStatus.FAILED, RunStatus.CANCELLED}
        }
        if bad:
            raise RuntimeError(f"runtrack runs ended {bad}")
        return self.expected - counts.get(RunStatus.COMPLETED, 0)

    async def enqueue_stamp(self, index: int) -> None:
        await self.tasks.stamp.submit(index)

    async def verify(self, n: int) -> None:
        counts = await self.reader.count_runs()
        shown = {s.value: k for s, k in counts.items() if k}
        if counts.get(RunStatus.COMPLETED, 0) != n or sum(counts.values()) != n:
            raise RuntimeError(f"the registry holds {shown} instead of {n} completed runs")
