"""``manager.queue_depth()``: QUEUED runs in the registry by priority."""

from __future__ import annotations

import asyncio

from helpers import SAFETY, wait_until
from redis_registries import redis_registry
from runtrack import BackgroundTaskManager, Run, RunRegistry, RunStatus
from runtrack._models import utcnow
from runtrack.registry._depth import QueueDepthReading, queue_depth_of


class TestRegistry:
    """The count on every backend follows inserts, status changes and priority changes."""

    async def test_counts_follow_the_runs(self, registry: RunRegistry) -> None:
        assert isinstance(registry, QueueDepthReading)
        assert await registry.queue_depth() == {}
        runs = [Run(name="q", priority=p) for p in (0, 0, 5, -1)]
        for run in runs:
            await registry.add_run(run)
        await registry.add_run(Run(name="r", status=RunStatus.RUNNING, started_at=utcnow()))
        await registry.add_run(Run(name="d", status=RunStatus.COMPLETED, finished_at=utcnow()))
        assert await registry.queue_depth() == {-1: 1, 0: 2, 5: 1}
        await registry.transition(runs[0].run_id, RunStatus.RUNNING, started_at=utcnow())
        await registry.update_run(runs[3].run_id, priority=5)
        assert await registry.queue_depth() == {0: 1, 5: 2}
        await registry.transition(runs[2].run_id, RunStatus.CANCELLED, finished_at=utcnow())
        await registry.transition(runs[1].run_id, RunStatus.CANCELLED, finished_at=utcnow())
        assert await registry.queue_depth() == {5: 1}
        # a retry puts a run back in the queue
        await registry.transition(runs[0].run_id, RunStatus.QUEUED, attempt=2)
        assert await registry.queue_depth() == {0: 1, 5: 1}

    async def test_batched_writes_count_too(self, registry: RunRegistry) -> None:
        async with BackgroundTaskManager(registry, max_concurrency=1) as manager:
            gate = asyncio.Event()

            async def work() -> None:
                await gate.wait()

            first = await manager.submit(work, priority=1)
            await wait_until(lambda: manager.stats().running == 1)
            for priority in (1, 2, 2):
                await manager.submit(work, priority=priority)
            assert await manager.queue_depth() == {1: 1, 2: 2}
            assert manager.stats().queue_depth == {1: 1, 2: 2}
            gate.set()
            await manager.wait_all(timeout=SAFETY)
            assert await manager.queue_depth() == {}
            assert (await registry.get_run(first.run_id)).status is RunStatus.COMPLETED  # type: ignore[union-attr]


async def test_stats_are_refreshed_in_the_background() -> None:
    async with BackgroundTaskManager(heartbeat_interval=0.05) as manager:
        assert manager.stats().queue_depth is None or manager.stats().queue_depth == {}
        await manager.registry.add_run(Run(name="elsewhere", priority=3))
        await wait_until(lambda: manager.stats().queue_depth == {3: 1}, SAFETY)


async def test_redis_counts_a_layout_without_counts_on_first_read() -> None:
    async with redis_registry() as registry:
        for priority in (0, 0, 9):
            await registry.add_run(Run(name="q", priority=priority))
        # as a prefix written before the counts existed would be
        await registry._client.delete(registry._keys.queued_depth)  # type: ignore[attr-defined]
        assert await registry.queue_depth() == {0: 2, 9: 1}  # type: ignore[attr-defined]
        await registry.add_run(Run(name="q", priority=9))
        assert await registry.queue_depth() == {0: 2, 9: 2}  # type: ignore[attr-defined]


async def test_a_registry_without_the_capability_is_read_by_pages() -> None:
    from runtrack import InMemoryRunRegistry

    class Plain:
        def __init__(self) -> None:
            self.inner = InMemoryRunRegistry()

        def __getattr__(self, name: str) -> object:
            if name == "queue_depth":
                raise AttributeError(name)
            return getattr(self.inner, name)

    plain = Plain()
    for priority in (1, 1, 2):
        await plain.inner.add_run(Run(name="q", priority=priority))
    assert not isinstance(plain, QueueDepthReading)
    assert await queue_depth_of(plain) == {1: 2, 2: 1}  # type: ignore[arg-type]
