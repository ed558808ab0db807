"""Context variables: a run sees its caller's, as with asyncio.create_task, and no other run's."""

from __future__ import annotations

import asyncio
import contextvars

import structlog
from structlog.testing import capture_logs

import runtrack
from runtrack import BackgroundTaskManager, Run

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


async def read_request_id() -> str | None:
    await asyncio.sleep(0)
    return request_id.get()


def start_in_request(manager: BackgroundTaskManager, rid: str) -> str:
    """Start a run from a context of its own, as a web framework gives each request."""

    def handler() -> str:
        request_id.set(rid)
        return manager.start_task(Run(name="read"), read_request_id())

    return contextvars.copy_context().run(handler)


class TestContextVariables:
    async def test_each_run_sees_the_variables_of_its_caller(self) -> None:
        # One executor at a time runs them all back to back.
        async with BackgroundTaskManager(max_concurrency=1) as manager:
            ids = {rid: start_in_request(manager, rid) for rid in ("r1", "r2", "r3")}
            outside = manager.start_task(Run(name="read"), read_request_id())
            for rid, run_id in ids.items():
                assert (await manager.wait(run_id, timeout=5)).result == rid
            assert (await manager.wait(outside, timeout=5)).result is None

    async def test_a_variable_set_by_one_run_is_not_seen_by_the_next(self) -> None:
        leaked: contextvars.ContextVar[str] = contextvars.ContextVar("leaked", default="clean")

        async def dirty() -> None:
            leaked.set("dirty")
            request_id.set("overwritten")

        async def check() -> list[str | None]:
            return [leaked.get(), request_id.get()]

        async with BackgroundTaskManager(max_concurrency=1) as manager:
            first = manager.start_task(Run(name="dirty"), dirty())
            second = start_in_request(manager, "r2")
            third = manager.start_task(Run(name="check"), check())
            await manager.wait(first, timeout=5)
            assert (await manager.wait(second, timeout=5)).result == "r2"
            assert (await manager.wait(third, timeout=5)).result == ["clean", None]
        assert leaked.get() == "clean"  # nor does the caller

    async def test_structlog_bound_variables_follow_the_run(self) -> None:
        async def log_something() -> None:
            structlog.get_logger("app").info("working")

        async with BackgroundTaskManager(max_concurrency=2) as manager:
            with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
                for rid in ("a", "b", "c"):
                    structlog.contextvars.bind_contextvars(request_id=rid)
                    manager.start_task(Run(name="log"), log_something())
                structlog.contextvars.clear_contextvars()
                await manager.wait_all(timeout=5)
            seen = [e for e in logs if e["event"] == "working"]
        assert sorted(str(e["request_id"]) for e in seen) == ["a", "b", "c"]

    async def test_current_run_is_the_runs_own_in_nested_starts(self) -> None:
        async def child() -> str:
            return runtrack.current_run().run_id

        async def parent() -> list[str]:
            handle = runtrack.current_run()
            child_id = handle.manager.start_task(Run(name="child"), child())
            done = await handle.manager.wait(child_id, timeout=5)
            return [handle.run_id, child_id, str(done.result)]

        async with BackgroundTaskManager(max_concurrency=1) as manager:
            parent_id = manager.start_task(Run(name="parent"), parent())
            # max_concurrency=1: the child waits for the parent's slot; give it one more
            manager.set_max_concurrency(2)
            run = await manager.wait(parent_id, timeout=5)
        assert isinstance(run.result, list)
        own, child_id, child_saw = run.result
        assert own == parent_id
        assert child_saw == child_id  # not its parent's, whose context it was started from
