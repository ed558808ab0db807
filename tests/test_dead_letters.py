"""Dead letters: ``dead=True``, ``list_runs(dead=...)`` and ``manager.requeue``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest

from helpers import SAFETY
from runtrack import (
    BackgroundTaskManager,
    Retry,
    Run,
    RunNotFoundError,
    RunRegistry,
    RunStatus,
)
from runtrack._models import utcnow


def durable(**fields: Any) -> Run:
    """A finished run of the durable task ``charge``, as a manager would have recorded it."""
    now = utcnow()
    values: dict[str, Any] = {
        "name": "charge",
        "task": "charge",
        "args": {"args": [42], "kwargs": {"currency": "EUR"}},
        "status": RunStatus.FAILED,
        "created_at": now - timedelta(seconds=2),
        "started_at": now - timedelta(seconds=1),
        "finished_at": now,
        "error_type": "ValueError",
        "error_message": "card declined",
        "attempt": 3,
        "max_attempts": 3,
        "dead": True,
        "parameters": {"invoice": 7},
        "tags": {"tenant": "acme"},
        "group": "billing",
        "priority": 5,
        "timeout": 30.0,
        "owner": "gone:1:abc",
    }
    values.update(fields)
    return Run(**values)


class TestListDead:
    """``list_runs(dead=...)`` on every backend."""

    async def test_dead_filters_both_ways(self, registry: RunRegistry) -> None:
        dead = durable()
        failed = durable(dead=False, attempt=1)
        local = Run(name="local")
        for run in (dead, failed, local):
            await registry.add_run(run)
        assert [r.run_id for r in await registry.list_runs(dead=True)] == [dead.run_id]
        alive = {r.run_id for r in await registry.list_runs(dead=False)}
        assert alive == {failed.run_id, local.run_id}
        assert await registry.list_runs(dead=True, status=RunStatus.COMPLETED) == []
        assert [r.run_id for r in await registry.list_runs(dead=True, name="charge")] == [
            dead.run_id
        ]
        assert (await registry.get_run(dead.run_id)).dead  # type: ignore[union-attr]

    async def test_the_final_failure_write_sets_dead(self, registry: RunRegistry) -> None:
        run = durable(status=RunStatus.RUNNING, dead=False, finished_at=None)
        await registry.add_run(run)
        assert await registry.list_runs(dead=True) == []
        failed = await registry.transition(
            run.run_id, RunStatus.FAILED, finished_at=utcnow(), dead=True
        )
        assert failed is not None
        assert failed.dead
        assert [r.run_id for r in await registry.list_runs(dead=True)] == [run.run_id]
        # deleting it drops it from the dead letters too
        assert await registry.cleanup_old_runs(older_than=timedelta(0)) == 1
        assert await registry.list_runs(dead=True) == []


async def start_durable(
    manager: BackgroundTaskManager, fn: Any, *, retry: Retry | None = None
) -> str:
    """Start ``fn`` as a run of the durable task ``charge``, as a claiming manager does.

    Through the manager's internals: what matters here is how the end of a run whose job
    names a task is recorded, whichever way it was claimed.
    """
    run, job, loop = manager._job_for(
        fn, (), {}, name="charge", run_id=None, parameters=None, tags=None, group=None,
        priority=0, timeout=None, retry=retry, delay=None,
    )  # fmt: skip
    job.task = "charge"
    job.args = {"args": [], "kwargs": {}}
    run = run.model_copy(update={"task": "charge", "args": job.args})
    return (await manager._submit_job(run, job, loop, None)).run_id


class TestFinalFailure:
    """The end of a durable run's last attempt is recorded with ``dead=True``."""

    async def test_retries_exhausted(self, registry: RunRegistry) -> None:
        attempts: list[int] = []

        async def declined() -> None:
            attempts.append(1)
            raise ValueError("card declined")

        async def fine() -> str:
            return "ok"

        async with BackgroundTaskManager(registry) as manager:
            dead_id = await start_durable(manager, declined, retry=Retry(attempts=2, backoff=0))
            once_id = await start_durable(manager, declined)
            fine_id = await start_durable(manager, fine)
            local = await manager.submit(declined, name="local")
            await manager.wait_all(timeout=SAFETY)
        assert len(attempts) == 4
        dead = await registry.get_run(dead_id)
        assert dead is not None
        assert (dead.status, dead.attempt, dead.dead) == (RunStatus.FAILED, 2, True)
        assert dead.error_type == "ValueError"
        assert (await registry.get_run(once_id)).dead  # type: ignore[union-attr]
        assert not (await registry.get_run(fine_id)).dead  # type: ignore[union-attr]
        assert not (await registry.get_run(local.run_id)).dead  # type: ignore[union-attr]
        found = {r.run_id for r in await registry.list_runs(dead=True)}
        assert found == {dead_id, once_id}


class TestRequeue:
    """``manager.requeue``: a new unclaimed QUEUED run of the same task and arguments."""

    async def test_the_new_run_copies_the_old_one(self, registry: RunRegistry) -> None:
        old = durable(requeue_on_interrupt=True)
        await registry.add_run(old)
        async with BackgroundTaskManager(registry) as manager:
            new = await manager.requeue(old.run_id)
        assert new.run_id != old.run_id
        stored = await registry.get_run(new.run_id)
        assert stored == new
        assert new.status is RunStatus.QUEUED
        assert new.requeued_from == old.run_id
        assert new.owner is None  # any manager that registered the task may claim it
        assert new.attempt == 1
        assert new.dead is False
        assert (new.error_type, new.started_at, new.finished_at) == (None, None, None)
        same = ("name", "task", "args", "parameters", "tags", "group", "priority", "timeout")
        for field in (*same, "max_attempts", "requeue_on_interrupt"):
            assert getattr(new, field) == getattr(old, field), field
        # the dead letter stays one
        assert [r.run_id for r in await registry.list_runs(dead=True)] == [old.run_id]

    async def test_a_completed_durable_run_can_be_requeued_too(self, registry: RunRegistry) -> None:
        old = durable(status=RunStatus.COMPLETED, dead=False, error_type=None)
        await registry.add_run(old)
        async with BackgroundTaskManager(registry) as manager:
            new = await manager.requeue(old.run_id)
        assert new.requeued_from == old.run_id

    async def test_unknown_id(self) -> None:
        async with BackgroundTaskManager() as manager:
            with pytest.raises(RunNotFoundError):
                await manager.requeue("nope")

    async def test_a_local_run_is_refused(self) -> None:
        async with BackgroundTaskManager() as manager:
            run = Run(name="local", status=RunStatus.FAILED, finished_at=utcnow())
            await manager.registry.add_run(run)
            with pytest.raises(ValueError, match="not a run of a durable task"):
                await manager.requeue(run.run_id)

    async def test_an_active_run_is_refused(self) -> None:
        async with BackgroundTaskManager() as manager:
            run = durable(status=RunStatus.QUEUED, finished_at=None, dead=False, owner=None)
            await manager.registry.add_run(run)
            with pytest.raises(ValueError, match="only finished runs can be requeued"):
                await manager.requeue(run.run_id)
            assert len(await manager.registry.list_runs()) == 1

    async def test_a_delay_is_recorded_at_once(self, registry: RunRegistry) -> None:
        old = durable()
        await registry.add_run(old)
        before = utcnow()
        async with BackgroundTaskManager(registry) as manager:
            new = await manager.requeue(old.run_id, delay=timedelta(minutes=5))
            listed = await registry.list_runs(status=RunStatus.QUEUED)
        assert new.not_before is not None
        assert before + timedelta(minutes=5) <= new.not_before <= utcnow() + timedelta(minutes=5)
        assert [r.run_id for r in listed] == [new.run_id]
        stored = await registry.get_run(new.run_id)
        assert stored == new  # the manager's shutdown dropped nothing
        assert (stored.status, stored.owner, stored.not_before) == (
            RunStatus.QUEUED,
            None,
            new.not_before,
        )

    async def test_a_delayed_requeue_outlives_its_manager(self, registry: RunRegistry) -> None:
        """The manager that requeued stops; another one runs the run, once it is due."""
        old = durable(args={"args": [7], "kwargs": {}})
        await registry.add_run(old)
        async with BackgroundTaskManager(registry, poll_interval=0.05) as first:
            requeued_at = utcnow()
            new = await first.requeue(old.run_id, delay=0.3)
        ran: list[int] = []

        async def charge(invoice: int) -> int:
            ran.append(invoice)
            return invoice

        async with BackgroundTaskManager(registry, poll_interval=0.05) as second:
            second.task(name="charge")(charge)
            done = await second.wait(new.run_id, timeout=SAFETY)
        assert (done.status, done.result, ran) == (RunStatus.COMPLETED, 7, [7])
        assert done.started_at is not None
        assert done.started_at >= requeued_at + timedelta(seconds=0.3)
        assert done.not_before == new.not_before

    @pytest.mark.parametrize(
        "delay", [-1, float("nan"), float("inf"), True, timedelta(seconds=-1), 10**12]
    )
    async def test_a_bad_delay(self, delay: Any) -> None:
        async with BackgroundTaskManager() as manager:
            run = durable()
            await manager.registry.add_run(run)
            with pytest.raises(ValueError, match="delay"):
                await manager.requeue(run.run_id, delay=delay)
            with pytest.raises(TypeError, match="timedelta"):
                await manager.requeue(run.run_id, delay="5")  # type: ignore[arg-type]
            assert len(await manager.registry.list_runs()) == 1


@pytest.mark.skipif(
    not hasattr(BackgroundTaskManager, "task"), reason="needs durable tasks (@manager.task)"
)
async def test_a_durable_task_dead_letter_is_requeued_and_run_again(
    registry: RunRegistry,
) -> None:
    """End to end: retries run out, the dead letter is listed, its requeue is claimed."""
    healthy = False
    calls: list[int] = []

    async def charge(invoice: int) -> int:
        calls.append(invoice)
        if not healthy:
            raise ValueError("card declined")
        return invoice

    async with BackgroundTaskManager(registry) as manager:
        # Through Any: this branch may not have manager.task yet (the test is skipped then).
        task = cast(Any, manager).task(name="charge", retry=Retry(attempts=2, backoff=0))
        first = await task(charge).submit(7)
        dead = await manager.wait(first.run_id, timeout=SAFETY)
        assert (dead.status, dead.attempt, dead.dead) == (RunStatus.FAILED, 2, True)
        assert [r.run_id for r in await registry.list_runs(dead=True)] == [first.run_id]
        healthy = True
        again = await manager.requeue(first.run_id)
        done = await manager.wait(again.run_id, timeout=SAFETY)
        assert (done.status, done.result, done.dead) == (RunStatus.COMPLETED, 7, False)
        assert done.requeued_from == first.run_id
    assert calls == [7, 7, 7]
