"""A registry that implements only the `RunRegistry` protocol (the queued writer).

Its writes go one call at a time; the same promises hold as with the batch writer: an
ended id is never run again, a refused record is that run's problem, and nothing waits
for an unreachable registry for ever.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

import pytest
from structlog.testing import capture_logs

from helpers import DelegatingRegistry
from runtrack import (
    BackgroundTaskManager,
    Run,
    RunStatus,
    SyncTaskManager,
)

SAFETY = 30.0


class _Hanging(DelegatingRegistry):
    """Transitions never answer while ``down`` (a server that stopped responding)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def transition(self, run_id: str, to: Any, /, **kwargs: Any) -> Run | None:
        if self.down:
            await asyncio.Event().wait()
        return await super().transition(run_id, to, **kwargs)


class TestQueuedWriter:
    """The promises of the batch writer, through the protocol alone."""

    async def test_an_ended_id_is_refused(self) -> None:
        registry = DelegatingRegistry()
        ran: list[int] = []

        async def work(i: int) -> int:
            ran.append(i)
            return i

        async with BackgroundTaskManager(registry) as manager:
            first = await manager.submit(work, 1)
            await manager.wait(first.run_id, timeout=SAFETY)
            again = work(2)
            with capture_logs() as logs:
                manager.start_task(Run(run_id=first.run_id, name="again"), again)
                await manager.wait_all(timeout=SAFETY)
        assert ran == [1]
        assert inspect.getcoroutinestate(again) == inspect.CORO_CLOSED
        assert [e["event"] for e in logs].count("run_refused") == 1

    async def test_a_queued_record_is_run_and_a_queued_run_cancelled(self) -> None:
        registry = DelegatingRegistry()
        await registry.add_run(Run(run_id="pre", name="pre"))
        gate = asyncio.Event()

        async def work() -> str:
            await gate.wait()
            return "ran"

        async with BackgroundTaskManager(registry, max_concurrency=1) as manager:
            manager.start_task(Run(run_id="pre", name="pre"), work())
            waiting = await manager.submit(work)
            assert await manager.cancel_task(waiting.run_id)
            gate.set()
            assert (await manager.wait("pre", timeout=SAFETY)).result == "ran"
        assert (await registry.get_run(waiting.run_id)).status is RunStatus.CANCELLED  # type: ignore[union-attr]

    async def test_shutdown_gives_a_silent_registry_registry_timeout(self) -> None:
        registry = _Hanging()
        finish = asyncio.Event()

        async def work() -> int:
            await finish.wait()
            return 1

        manager = BackgroundTaskManager(registry, registry_timeout=0.2, shutdown_grace=0)
        await manager.__aenter__()
        run = await manager.submit(work)
        await manager._writer.flush()
        registry.down = True
        finish.set()
        with capture_logs() as logs:
            async with asyncio.timeout(SAFETY):
                await manager.shutdown()
        lost = [e for e in logs if e["event"] == "registry_writes_lost"]
        assert len(lost) == 1
        assert {r["run_id"] for r in lost[0]["runs"]} >= {run.run_id}


class TestSubmissionChecks:
    """What submit refuses before anything is recorded."""

    async def test_not_callable_nor_awaitable(self) -> None:
        async with BackgroundTaskManager() as manager:
            with pytest.raises(TypeError, match="async function or a coroutine"):
                await manager.submit(42)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="awaitable"):
                manager.start_task(Run(name="x"), 42)  # type: ignore[arg-type]

    async def test_collisions_on_unhashable_callables_and_builtins(self) -> None:
        class Greeter:
            __hash__ = None  # type: ignore[assignment]

            async def __call__(self, name: str) -> str:
                return name

        async with BackgroundTaskManager() as manager:
            with pytest.raises(TypeError, match=r"functools\.partial"):
                await manager.submit(Greeter(), name="Bob")
        async with BackgroundTaskManager() as manager:
            run = await manager.submit(functools.partial(max, 1, 2), name="builtin")
            assert (await manager.wait(run.run_id, timeout=SAFETY)).result == 2


class TestSyncTaskManagerEdges:
    """Construction errors, repr and the manager underneath."""

    def test_bad_options_raise_and_stop_the_loop(self) -> None:
        with pytest.raises(ValueError, match="max_concurrency"):
            SyncTaskManager(max_concurrency=0)

    def test_repr_and_manager(self) -> None:
        with SyncTaskManager() as manager:
            assert "running" in repr(manager)
            assert isinstance(manager.manager, BackgroundTaskManager)
        assert "closed" in repr(manager)
