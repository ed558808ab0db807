"""Durable tasks: registered by name, submitted by one manager, claimed and run by any.

Runs once per backend of the conformance suite (memory, SQLite, PostgreSQL, MariaDB,
Redis) through the ``registry`` fixture; managers in one process share the registry
object, as replicas share a database.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

import runtrack
from runtrack import (
    BackgroundTaskManager,
    DuplicateRunError,
    ManagerInfo,
    Retry,
    Run,
    RunRegistry,
    RunStatus,
    TaskClaiming,
    TaskFunction,
)
from runtrack._wakeups import MAX_PENDING, Wakeups
from runtrack.registry.base import ManagerPresence

Q, R, C, F, X = (
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
)


def claiming(registry: RunRegistry) -> TaskClaiming:
    assert isinstance(registry, TaskClaiming)
    return registry


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it holds (a deadline, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


async def all_finished(registry: RunRegistry, runs: list[Run], timeout: float = 120.0) -> list[Run]:
    ids = {run.run_id for run in runs}
    found: dict[str, Run] = {}

    async def done() -> bool:
        for run_id in list(ids - found.keys()):
            got = await registry.get_run(run_id)
            if got is not None and got.status.is_terminal:
                found[run_id] = got
        return found.keys() == ids

    await until(done, timeout)
    return [found[run.run_id] for run in runs]


def sender(manager: BackgroundTaskManager, name: str) -> TaskFunction[..., Any]:
    """Submits runs of ``name`` through ``manager`` without registering the task there
    (as a replica that only enqueues: ``run_here=False``)."""
    return manager.task(name=name, run_here=False)(lambda *a, **k: None)


def manager_for(registry: RunRegistry, **options: Any) -> BackgroundTaskManager:
    options.setdefault("poll_interval", 0.05)
    options.setdefault("shutdown_grace", 5.0)
    return BackgroundTaskManager(registry, **options)


class TestRegistryClaims:
    """`TaskClaiming`: add_runs, claim_runs and release_runs on each backend."""

    async def test_add_runs_all_or_none(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        await registry.add_run(Run(run_id="taken"))
        runs = [Run(run_id=f"r{i}", task="t", args={"args": [i]}) for i in range(3)]

        with pytest.raises(DuplicateRunError) as caught:
            await reg.add_runs([*runs, Run(run_id="taken", task="t")])

        assert caught.value.run_id == "taken"
        assert [r.run_id for r in await registry.list_runs(task="t")] == []
        await reg.add_runs(runs)
        assert {r.run_id for r in await registry.list_runs(task="t")} == {"r0", "r1", "r2"}
        assert await registry.get_run("r1") == runs[1]

    async def test_claim_order_and_owner(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        await reg.add_runs(
            [
                Run(run_id="old", task="t", created_at=t0),
                Run(run_id="new", task="t", created_at=t0 + timedelta(seconds=1)),
                Run(run_id="urgent", task="t", priority=5, created_at=t0 + timedelta(seconds=2)),
                Run(run_id="other-task", task="u", created_at=t0),
                Run(run_id="local", created_at=t0),
                Run(run_id="owned", task="t", owner="someone", created_at=t0),
                Run(run_id="running", task="t", status=R, created_at=t0),
            ]
        )

        first = await reg.claim_runs("me", ["t"], 2)
        rest = await reg.claim_runs("me", ["t", "u"], 10)

        assert [r.run_id for r in first] == ["urgent", "old"]
        # Recorded RUNNING by the claim itself: starting the run costs no write.
        assert all(r.owner == "me" and r.status is R and r.started_at for r in first)
        assert all(r.heartbeat_at == r.started_at for r in first)
        assert [r.run_id for r in rest] == ["other-task", "new"]
        assert await reg.claim_runs("me", ["t", "u"], 10) == []
        got = await registry.get_run("urgent")
        assert got is not None
        assert (got.owner, got.status, got.started_at) == ("me", R, first[0].started_at)
        counts = await registry.count_runs()
        assert (counts.get(Q, 0), counts.get(R, 0)) == (2, 5)  # "owned" and "local" wait
        assert {r.run_id for r in await registry.list_runs(status=R)} == {
            "urgent",
            "old",
            "other-task",
            "new",
            "running",
        }

    async def test_a_claimed_run_is_returned_as_stored(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        run = Run(
            run_id="full", name="resize", task="resize", timeout=5.0, priority=3, group="img",
            parameters={"size": 1.0, "ok": True}, tags={"tenant": "ä"}, idempotency_key="k",
            args={"args": ["a.png", 2.5], "kwargs": {"deep": {"x": [1, None]}}},
            max_attempts=3, requeue_on_interrupt=True,
        )  # fmt: skip
        await reg.add_runs([run])

        (claimed,) = await reg.claim_runs("me", ["resize"], 5)

        assert claimed == await registry.get_run("full")
        assert isinstance(claimed.timeout, float)
        unchanged = {"status", "owner", "started_at", "heartbeat_at"}
        assert claimed.model_dump(exclude=unchanged) == run.model_dump(exclude=unchanged)
        assert claimed.model_dump_json() == (await registry.get_run("full")).model_dump_json()  # type: ignore[union-attr]

    async def test_release(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        await reg.add_runs([Run(run_id=f"r{i}", task="t") for i in range(3)])
        claimed = await reg.claim_runs("me", ["t"], 3)
        assert len(claimed) == 3
        await registry.transition("r2", C)
        # A retry waiting for its backoff: QUEUED, still owned by the manager.
        await reg.add_runs([Run(run_id="retry", task="t", owner="me", attempt=2)])

        assert await reg.release_runs("other", ["r0", "retry"]) == 0
        released = await reg.release_runs("me", ["r0", "r1", "r2", "retry", "missing"])

        assert released == 3
        for run_id in ("r0", "r1", "retry"):
            run = await registry.get_run(run_id)
            assert run is not None
            assert (run.status, run.owner, run.heartbeat_at) == (Q, None, None)
        r0 = await registry.get_run("r0")
        assert r0 is not None
        assert r0.started_at is None
        assert (await registry.count_runs()).get(R, 0) == 0
        done = await registry.get_run("r2")
        assert done is not None
        assert (done.status, done.owner) == (C, "me")
        again = await reg.claim_runs("you", ["t"], 10)
        assert sorted(r.run_id for r in again) == ["r0", "r1", "retry"]

    async def test_cancelled_run_is_not_claimed(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        await reg.add_runs([Run(run_id="a", task="t"), Run(run_id="b", task="t")])
        await registry.transition("a", X)

        claimed = await reg.claim_runs("me", ["t"], 10)

        assert [r.run_id for r in claimed] == ["b"]

    async def test_concurrent_claims_have_one_winner(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        await reg.add_runs([Run(run_id=f"r{i:03}", task="t") for i in range(200)])

        async def claimer(owner: str) -> list[str]:
            got: list[str] = []
            while True:
                batch = await reg.claim_runs(owner, ["t"], 7)
                if not batch:
                    return got
                got.extend(r.run_id for r in batch)

        results = await asyncio.gather(*(claimer(f"m{i}") for i in range(4)))

        everything = [run_id for got in results for run_id in got]
        assert len(everything) == 200
        assert len(set(everything)) == 200
        for i, got in enumerate(results):
            for run_id in got[:3]:
                run = await registry.get_run(run_id)
                assert run is not None
                assert run.owner == f"m{i}"


class TestNotBefore:
    """`TaskClaiming` leaves a run alone until its ``not_before``, on each backend."""

    async def test_claimed_only_once_due(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        now = datetime.now(UTC)
        soon = now + timedelta(seconds=0.3)
        await reg.add_runs(
            [
                Run(run_id="soon", task="t", not_before=soon, priority=9),
                Run(run_id="cancelled-soon", task="t", not_before=soon),
                Run(run_id="later", task="t", not_before=now + timedelta(hours=1)),
                Run(run_id="plain", task="t"),
            ]
        )
        await registry.transition("cancelled-soon", X)
        taken: list[Run] = []
        early: list[str] = []  # what claims that ended before `soon` returned

        async def soon_claimed() -> bool:
            got = await reg.claim_runs("me", ["t"], 10)
            if datetime.now(UTC) < soon:
                early.extend(r.run_id for r in got)
            taken.extend(got)
            return any(r.run_id == "soon" for r in taken)

        await until(soon_claimed)

        assert "soon" not in early
        assert sorted(r.run_id for r in taken) == ["plain", "soon"]
        (run,) = [r for r in taken if r.run_id == "soon"]
        assert (run.owner, run.not_before) == ("me", soon)
        assert await reg.claim_runs("me", ["t"], 10) == []
        stored = await registry.get_run("later")
        assert stored is not None
        assert (stored.status, stored.owner) == (Q, None)

    async def test_order_of_due_runs_unchanged(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        past = datetime.now(UTC) - timedelta(minutes=1)
        await reg.add_runs(
            [
                Run(run_id="a-old", task="t", created_at=t0, not_before=past),
                Run(run_id="b-new", task="t", created_at=t0 + timedelta(seconds=1)),
                Run(run_id="c-urgent", task="t", priority=5, created_at=t0 + timedelta(2)),
                Run(run_id="d-due", task="t", created_at=t0 + timedelta(3), not_before=past),
                Run(
                    run_id="e-urgent-later",
                    task="t",
                    priority=9,
                    created_at=t0,
                    not_before=datetime.now(UTC) + timedelta(hours=1),
                ),
            ]
        )

        claimed = await reg.claim_runs("me", ["t"], 2)
        claimed += await reg.claim_runs("me", ["t"], 10)

        assert [r.run_id for r in claimed] == ["c-urgent", "a-old", "b-new", "d-due"]

    async def test_release_keeps_not_before(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        due = datetime.now(UTC) - timedelta(seconds=1)
        await reg.add_runs([Run(run_id="r", task="t", not_before=due)])
        (claimed,) = await reg.claim_runs("me", ["t"], 1)

        assert await reg.release_runs("me", ["r"]) == 1

        stored = await registry.get_run("r")
        assert stored is not None
        assert (claimed.not_before, stored.not_before, stored.owner) == (due, due, None)
        assert [r.run_id for r in await reg.claim_runs("you", ["t"], 1)] == ["r"]

    async def test_a_dead_owners_delayed_run_keeps_its_delay(self, registry: RunRegistry) -> None:
        assert isinstance(registry, ManagerPresence)
        beat = datetime.now(UTC) - timedelta(seconds=120)
        await registry.register_manager(
            ManagerInfo(owner="dead", started_at=beat, heartbeat_at=beat, lease_seconds=10)
        )
        later = datetime.now(UTC) + timedelta(hours=1)
        await claiming(registry).add_runs(
            [
                Run(run_id="delayed", task="t", owner="dead", not_before=later),
                Run(
                    run_id="requeued",
                    task="t",
                    owner="dead",
                    status=R,
                    started_at=beat,
                    requeue_on_interrupt=True,
                    not_before=later,
                ),
            ]
        )

        await registry.interrupt_dead_managers(datetime.now(UTC), "survivor")

        for run_id in ("delayed", "requeued"):
            stored = await registry.get_run(run_id)
            assert stored is not None
            assert (stored.status, stored.owner, stored.not_before) == (Q, None, later)
        assert await claiming(registry).claim_runs("survivor", ["t"], 10) == []


class TestSweep:
    """A dead owner's durable runs: QUEUED released, RUNNING requeued only if asked."""

    async def test_dead_owner(self, registry: RunRegistry) -> None:
        assert isinstance(registry, ManagerPresence)
        beat = datetime.now(UTC) - timedelta(seconds=120)
        await registry.register_manager(
            ManagerInfo(
                owner="dead", started_at=beat, heartbeat_at=beat, lease_seconds=10, running=3
            )
        )
        await claiming(registry).add_runs(
            [
                Run(run_id="dq", task="t", owner="dead"),
                Run(run_id="dr", task="t", owner="dead", status=R, started_at=beat),
                Run(
                    run_id="drq",
                    task="t",
                    owner="dead",
                    status=R,
                    started_at=beat,
                    requeue_on_interrupt=True,
                ),
                Run(run_id="lq", owner="dead"),
                Run(run_id="lr", owner="dead", status=R, started_at=beat),
            ]
        )

        swept = await registry.interrupt_dead_managers(datetime.now(UTC), "survivor")

        by_id = {run.run_id: run for run in swept}
        assert set(by_id) == {"dr", "drq", "lq", "lr"}
        assert (by_id["drq"].previous, by_id["drq"].status) == (R, Q)
        runs = {
            run_id: await registry.get_run(run_id) for run_id in ("dq", "dr", "drq", "lq", "lr")
        }
        assert runs["dq"] is not None
        assert (runs["dq"].status, runs["dq"].owner) == (Q, None)
        assert runs["dr"] is not None
        assert (runs["dr"].status, runs["dr"].error_type) == (F, "RunInterrupted")
        assert runs["drq"] is not None
        assert (runs["drq"].status, runs["drq"].owner, runs["drq"].attempt) == (Q, None, 2)
        assert runs["drq"].started_at is None
        assert runs["lq"] is not None
        assert runs["lq"].status is X
        assert runs["lr"] is not None
        assert runs["lr"].status is F
        claimed = await claiming(registry).claim_runs("survivor", ["t"], 10)
        assert sorted(r.run_id for r in claimed) == ["dq", "drq"]


class TestManagers:
    """Managers register tasks, submit them, and run each other's submissions."""

    async def test_submit_runs_on_another_manager(self, registry: RunRegistry) -> None:
        calls: list[tuple[int, str]] = []
        submitter = manager_for(registry, owner="submitter")
        worker = manager_for(registry, owner="worker")

        @worker.task(name="add")
        async def add(a: int, b: int, *, note: str = "") -> int:
            calls.append((a + b, note))
            return a + b

        async with submitter, worker:
            run = await sender(submitter, "add").submit(2, 3, note="hi")
            assert run.task == "add"
            assert run.owner is None
            assert run.args == {"args": [2, 3], "kwargs": {"note": "hi"}}
            (done,) = await all_finished(registry, [run])

        assert calls == [(5, "hi")]
        assert (done.status, done.result, done.owner, done.task) == (C, 5, "worker", "add")

    async def test_only_registered_names_are_claimed(self, registry: RunRegistry) -> None:
        ran: list[str] = []
        worker = manager_for(registry, owner="worker")

        @worker.task()
        async def known() -> None:
            ran.append("known")

        async with worker:
            other = await sender(worker, "unknown").submit()
            mine = await known.submit()
            await all_finished(registry, [mine])
            stored = await registry.get_run(other.run_id)

        assert ran == ["known"]
        assert stored is not None
        assert (stored.status, stored.owner) == (Q, None)

    async def test_sync_function_and_direct_call(self, registry: RunRegistry) -> None:
        async with manager_for(registry) as manager:

            @manager.task(name="square")
            def square(x: int) -> int:
                return x * x

            assert square(4) == 16  # a plain call runs the function
            run = await square.submit(5)
            (done,) = await all_finished(registry, [run])

        assert (done.status, done.result) == (C, 25)

    async def test_retry_and_failure(self, registry: RunRegistry) -> None:
        attempts: collections.Counter[str] = collections.Counter()
        async with manager_for(registry) as manager:

            @manager.task(retry=Retry(attempts=3, backoff=0.01))
            async def flaky(key: str) -> str:
                attempts[key] += 1
                if attempts[key] < 3:
                    raise ValueError("not yet")
                return key

            @manager.task(timeout=0.05)
            async def slow() -> None:
                await asyncio.sleep(30)

            ok = await flaky.submit("k")
            late = await slow.submit()
            done, timed_out = await all_finished(registry, [ok, late])

        assert (done.status, done.result, done.attempt, done.max_attempts) == (C, "k", 3, 3)
        assert (timed_out.status, timed_out.error_type) == (F, "TimeoutError")

    async def test_cancel_a_claimed_run(self, registry: RunRegistry) -> None:
        started = asyncio.Event()
        async with manager_for(registry) as manager:

            @manager.task()
            async def forever() -> None:
                started.set()
                await asyncio.sleep(60)

            run = await forever.submit()
            await asyncio.wait_for(started.wait(), 60)
            assert await manager.cancel_task(run.run_id)
            (done,) = await all_finished(registry, [run])

        assert done.status is X

    async def test_arguments_must_be_json(self, registry: RunRegistry) -> None:
        async with manager_for(registry) as manager:

            @manager.task()
            async def takes(value: object) -> None:
                return None

            with pytest.raises(TypeError, match="must be JSON"):
                await takes.submit(object())
            with pytest.raises(TypeError, match="keys are str"):
                await takes.submit({1: "a"})
            with pytest.raises(ValueError, match="must be JSON"):
                await takes.submit(float("nan"))
            with pytest.raises(ValueError, match="NUL"):
                await takes.submit(value="a\x00b")
            run = await takes.submit((1, 2))
            assert run.args == {"args": [[1, 2]], "kwargs": {}}
            with pytest.raises(ValueError, match="max_payload_bytes"):
                await BackgroundTaskManager.task(manager, name="big")(takes.func).submit(
                    "x" * 2_000_000
                )
        assert [r.args for r in await registry.list_runs()] == [{"args": [[1, 2]], "kwargs": {}}]

    async def test_option_parameter_collision(self, registry: RunRegistry) -> None:
        async with manager_for(registry) as manager:

            @manager.task()
            async def tagged(tags: list[str]) -> None:
                return None

            with pytest.raises(TypeError, match="positionally"):
                await tagged.submit(tags={"a": "b"})
            run = await tagged.submit(["x"], tags={"a": "b"})

        assert run.args == {"args": [["x"]], "kwargs": {}}
        assert run.tags == {"a": "b"}

    async def test_two_functions_one_name(self, registry: RunRegistry) -> None:
        manager = manager_for(registry)

        @manager.task(name="same")
        async def one() -> None: ...

        with pytest.raises(ValueError, match="already registered"):

            @manager.task(name="same")
            async def two() -> None: ...

    async def test_plain_coroutine_stays_local(self, registry: RunRegistry) -> None:
        async with manager_for(registry) as manager:
            run = await manager.submit(asyncio.sleep(0))
            (done,) = await all_finished(registry, [run])

        assert done.task is None
        assert done.status is C

    async def test_submit_many(self, registry: RunRegistry) -> None:
        seen: list[int] = []
        async with manager_for(registry, max_concurrency=4) as manager:

            @manager.task()
            async def record(i: int, *, scale: int = 1) -> int:
                seen.append(i * scale)
                return i

            runs = await record.submit_many([([i], {"scale": 2}) for i in range(50)])
            done = await all_finished(registry, runs)

        assert sorted(seen) == [2 * i for i in range(50)]
        assert all(run.status is C for run in done)
        with pytest.raises(TypeError, match="pairs"):
            await record.submit_many([1])  # type: ignore[list-item]

    async def test_exactly_once_across_three_managers(self, registry: RunRegistry) -> None:
        executed: collections.Counter[int] = collections.Counter()
        by_owner: collections.Counter[str] = collections.Counter()
        managers = [manager_for(registry, owner=f"m{i}", max_concurrency=5) for i in range(3)]
        for manager in managers:

            @manager.task(name="count")
            async def count(i: int, _owner: str = manager.owner) -> None:
                executed[i] += 1
                by_owner[_owner] += 1
                await asyncio.sleep(0)

        for manager in managers:
            await manager.__aenter__()
        try:
            runs = await sender(managers[0], "count").submit_many([([i], {}) for i in range(300)])
            done = await all_finished(registry, runs)
        finally:
            for manager in managers:
                await manager.shutdown()

        assert all(run.status is C for run in done)
        assert sorted(executed) == list(range(300))
        assert set(executed.values()) == {1}
        assert sum(by_owner.values()) == 300

    async def test_shutdown_releases_claimed_runs(self, registry: RunRegistry) -> None:
        gate = asyncio.Event()
        first = manager_for(registry, owner="first", max_concurrency=1)

        @first.task(name="blocker")
        async def blocker(i: int) -> int:
            await gate.wait()
            return i

        async with first:
            runs = await blocker.submit_many([([i], {}) for i in range(3)])

            async def claimed() -> bool:
                got = await registry.get_run(runs[0].run_id)
                return got is not None and got.status is R

            await until(claimed)
            gate.set()
            await first.shutdown(grace=0)

        stored = [await registry.get_run(run.run_id) for run in runs]
        unclaimed = [r for r in stored if r is not None and r.status is Q]
        assert all(r.owner is None for r in unclaimed)
        # The one that ran ended (completed or cancelled); none stayed claimed.
        assert all(r is not None and (r.status is not Q or r.owner is None) for r in stored)
        second = manager_for(registry, owner="second")
        second.task(name="blocker")(blocker.func)
        async with second:
            done = await all_finished(registry, unclaimed)
        assert all(r.status is C for r in done)

    async def test_default_manager_task(self, registry: RunRegistry) -> None:
        @runtrack.task(name="durable-default-test")
        async def doubled(x: int) -> int:
            return 2 * x

        manager = manager_for(registry)
        runtrack.set_default_manager(manager)
        try:
            async with manager:
                run = await doubled.submit(21)
                (done,) = await all_finished(registry, [run])
        finally:
            runtrack.set_default_manager(None)
        assert (done.status, done.result) == (C, 42)


class TestDelay:
    """``fn.submit(delay=...)``: recorded at once with ``not_before``, run no sooner."""

    async def test_runs_no_sooner_than_the_delay(self, registry: RunRegistry) -> None:
        # No polling: only the wake-up this manager sets at not_before starts the runs.
        manager = manager_for(registry, poll_interval=3600)

        @manager.task(name="later")
        async def later(x: int) -> int:
            return x

        async with manager:
            # Each record is read straight after its submit: a busy machine may take longer
            # than the delay between two submits, but not between a submit and one read.
            submitted = datetime.now(UTC)
            run = await later.submit(1, delay=1.0)
            first = await registry.get_run(run.run_id)
            assert first is not None
            listed = {run.run_id: first}
            many = await later.submit_many([([2], {}), ([3], {})], delay=timedelta(seconds=1.0))
            ids = {r.run_id for r in many}
            stored = await registry.list_runs(task="later")
            listed |= {r.run_id: r for r in stored if r.run_id in ids}
            done = await all_finished(registry, [run, *many])

        assert run.not_before is not None
        assert run.not_before >= submitted + timedelta(seconds=1.0)
        assert all(r.not_before is not None and r.not_before >= run.not_before for r in many)
        assert listed == {r.run_id: r for r in (run, *many)}  # recorded before submit returned
        assert all(r.status is Q and r.owner is None for r in listed.values())
        assert [(r.status, r.result) for r in done] == [(C, 1), (C, 2), (C, 3)]
        for before, after in zip((run, *many), done, strict=True):
            assert before.not_before is not None
            assert after.started_at is not None
            assert after.started_at >= before.not_before
            assert after.not_before == before.not_before

    async def test_another_manager_runs_it_once_due(self, registry: RunRegistry) -> None:
        web = manager_for(registry, owner="web")
        async with web:
            run = await sender(web, "mailer").submit("hi", delay=0.3)
        ran: list[str] = []
        worker = manager_for(registry, owner="worker")

        @worker.task(name="mailer")
        async def mailer(text: str) -> str:
            ran.append(text)
            return text

        async with worker:
            (done,) = await all_finished(registry, [run])

        assert (done.status, done.owner, ran) == (C, "worker", ["hi"])
        assert run.not_before is not None
        assert done.started_at is not None
        assert done.started_at >= run.not_before

    async def test_no_delay(self, registry: RunRegistry) -> None:
        async with manager_for(registry) as manager:

            @manager.task(name="now")
            async def now() -> str:
                return "now"

            run = await now.submit(delay=0)
            (done,) = await all_finished(registry, [run])

        assert (run.not_before, done.not_before, done.status) == (None, None, C)

    @pytest.mark.parametrize(
        ("delay", "error"),
        [
            (-1, ValueError),
            (float("nan"), ValueError),
            (float("inf"), ValueError),
            (True, ValueError),
            (timedelta(seconds=-1), ValueError),
            ("5", TypeError),
        ],
    )
    async def test_bad_delays(
        self, registry: RunRegistry, delay: Any, error: type[Exception]
    ) -> None:
        async with manager_for(registry) as manager:
            fn = sender(manager, "never")
            with pytest.raises(error, match="timedelta"):
                await fn.submit(delay=delay)
            with pytest.raises(error, match="timedelta"):
                await fn.submit_many([((), {})], delay=delay)
        assert await registry.list_runs() == []

    async def test_a_parameter_named_delay(self, registry: RunRegistry) -> None:
        async with manager_for(registry) as manager:

            @manager.task()
            async def backoff(delay: float) -> float:
                return delay

            with pytest.raises(TypeError, match="positionally"):
                await backoff.submit(delay=5)
            run = await backoff.submit(5, delay=0.01)

        assert run.args == {"args": [5], "kwargs": {}}
        assert run.not_before is not None


class TestOneRoundTrip:
    """submit_many records any number of runs with one statement or one script call."""

    async def test_submit_many_is_one_round_trip(self, registry: RunRegistry) -> None:
        # Every statement or command sent meanwhile, the manager's own background reads
        # (claims, queue depth) included: the runs must go in one INSERT or one script call.
        sent: list[str] = []
        if hasattr(registry, "engine"):
            import sqlalchemy as sa

            def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                sent.append(statement.split(maxsplit=1)[0].upper())

            sa.event.listen(registry.engine.sync_engine, "before_cursor_execute", record)
            writes = {"INSERT"}  # a heartbeat or a claim is an UPDATE
        elif hasattr(registry, "_client"):
            client = registry._client
            execute = client.execute_command

            async def counted(*args: Any, **options: Any) -> Any:
                sent.append(" ".join(map(str, args[:2])).upper())
                return await execute(*args, **options)

            client.execute_command = counted
            writes = {f"EVALSHA {registry._claiming()[0].sha}".upper()}  # type: ignore[attr-defined]
        else:  # no round trip at all: one call of the registry, the same all-or-none insert
            add_runs = registry.add_runs  # type: ignore[attr-defined]

            async def one_call(runs: Any) -> None:
                sent.append("add_runs")
                await add_runs(runs)

            registry.add_runs = one_call  # type: ignore[attr-defined]
            writes = {"add_runs"}
        manager = manager_for(registry)
        work = sender(manager, "bulk")
        async with manager:
            await work.submit_many([([0], {})])  # the schema, the script: loaded once
            sent.clear()
            runs = await work.submit_many([([i], {"k": str(i)}) for i in range(1, 1001)])
            kinds = list(sent)

        assert len([k for k in kinds if k in writes]) == 1, kinds
        assert len(await registry.list_runs(task="bulk", limit=2000)) == 1001
        assert runs[-1].args == {"args": [1000], "kwargs": {"k": "1000"}}


class TestPrefetch:
    """A bounded manager holds claimed runs of quick tasks beyond its free slots."""

    async def test_quick_tasks_are_prefetched_slow_ones_are_not(
        self, registry: RunRegistry
    ) -> None:
        gate = asyncio.Event()
        manager = manager_for(registry, owner="prefetcher", max_concurrency=2)

        @manager.task(name="quick")
        async def quick(i: int) -> int:
            return i

        @manager.task(name="gated")
        async def gated(i: int) -> int:
            await gate.wait()
            return i

        async def owned(runs: list[Run]) -> int:
            return sum(
                1 for run in await asyncio.gather(*(registry.get_run(r.run_id) for r in runs))
                if run is not None and run.owner == "prefetcher"
            )  # fmt: skip

        async with manager:
            # No run has ended here yet: nothing is known of durations, nothing prefetched.
            first = await gated.submit_many([([i], {}) for i in range(6)])
            await until(lambda: _is(owned(first), 2))
            assert manager._claims._free() == 0  # it would claim no more
            assert await owned(first) == 2
            gate.set()
            await all_finished(registry, first)

            # After quick runs, the claim holds what it expects to finish within
            # PREFETCH_HORIZON: here every run waiting, beyond its 2 slots.
            await all_finished(registry, await quick.submit_many([([i], {}) for i in range(20)]))
            # Idle, it claims half its room at a time: the next claim is on its way while
            # the runs of the last one execute.
            room = 2 + manager._claims._prefetch(2)
            assert room >= 8
            assert manager._claims._free() == room // 2
            gate.clear()
            second = await gated.submit_many([([i], {}) for i in range(8)])
            await until(lambda: _is(owned(second), 8))
            assert manager._claims._prefetch(2) >= 6
            gate.set()
            done = await all_finished(registry, second)
        assert all(run.status is C for run in done)


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


class TestWaking:
    """submit wakes this manager's claim loop and calls the announce hook."""

    async def test_announce_and_wake(self) -> None:
        announced: list[list[str]] = []
        manager = BackgroundTaskManager(poll_interval=3600)  # no polling: only wakes

        @manager.task(name="woken")
        async def woken() -> str:
            return "ran"

        async def announce(tasks: Collection[str]) -> None:
            announced.append(sorted(tasks))

        manager._claims.announce = announce
        async with manager:
            run = await woken.submit()
            done = await asyncio.wait_for(manager.wait(run.run_id), 60)
            many = await woken.submit_many([((), {}), ((), {})])
            await asyncio.wait_for(manager.wait(many[1].run_id), 60)

        assert (done.status, done.result) == (C, "ran")
        assert announced == [["woken"], ["woken"]]

    async def test_wake_from_another_thread(self) -> None:
        registry = runtrack.InMemoryRunRegistry()
        manager = BackgroundTaskManager(registry, poll_interval=3600)

        @manager.task(name="threaded")
        async def threaded() -> int:
            return 1

        async with manager:
            first = await threaded.submit()
            await asyncio.wait_for(manager.wait(first.run_id), 60)  # the loop is idle now
            await registry.add_runs([Run(run_id="quiet", task="threaded")])  # no wake
            await asyncio.to_thread(manager._claims.wake)
            done = await asyncio.wait_for(manager.wait("quiet"), 60)

        assert done.status is C


def _contestants(registry: RunRegistry) -> tuple[list[BackgroundTaskManager], list[str]]:
    """Managers "first" and "second", each running task ``contested``, and the list of the
    owners whose code ran it (one entry per execution)."""
    executed: list[str] = []
    managers = [manager_for(registry, owner=owner) for owner in ("first", "second")]
    for manager in managers:

        @manager.task(name="contested")
        async def contested(i: int, owner: str = manager.owner) -> int:
            executed.append(owner)
            return i

    return managers, executed


class TestStaleClaims:
    """Two managers holding the same run: the first holds it as a retry waiting to start
    again (recorded QUEUED under its name), was swept meanwhile, and the run was given back
    and claimed by the second. Exactly one of them runs it."""

    async def test_one_of_two_claimants_runs_it(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        submit_only = manager_for(registry)
        async with submit_only:
            run = await sender(submit_only, "contested").submit(7)
        stale = await reg.claim_runs("first", ["contested"], 1)
        await registry.transition(run.run_id, Q)  # its first attempt failed: a retry waits
        await reg.release_runs("first", [run.run_id])  # as the sweep of "first" does
        fresh = await reg.claim_runs("second", ["contested"], 1)
        assert [r.run_id for r in stale] == [r.run_id for r in fresh] == [run.run_id]

        managers, executed = _contestants(registry)

        async with managers[0], managers[1]:
            for manager, claimed in zip(managers, (stale, fresh), strict=True):
                manager._claims._adopt(claimed[0], manager._claims.specs())
            # The first holds it as its retry: it starts with a QUEUED -> RUNNING write.
            managers[0]._jobs[run.run_id].claimed = False
            (done,) = await all_finished(registry, [run])
            for manager in managers:
                await manager.wait_all()

        assert len(executed) == 1, executed
        assert (done.status, done.owner) == (C, executed[0])

    async def test_a_retry_waiting_under_another_owner_is_not_started(
        self, registry: RunRegistry
    ) -> None:
        # The second claimed it after the sweep, and its own retry now waits (QUEUED under
        # its name): the first's QUEUED -> RUNNING write must not take it.
        reg = claiming(registry)
        submit_only = manager_for(registry)
        async with submit_only:
            run = await sender(submit_only, "contested").submit(7)
        stale = await reg.claim_runs("first", ["contested"], 1)
        await registry.transition(run.run_id, Q)
        await reg.release_runs("first", [run.run_id])
        fresh = await reg.claim_runs("second", ["contested"], 1)
        await registry.transition(run.run_id, Q)  # the second's first attempt failed
        assert [r.run_id for r in stale] == [r.run_id for r in fresh] == [run.run_id]

        managers, executed = _contestants(registry)

        first, second = managers
        async with first, second:
            first._claims._adopt(stale[0], first._claims.specs())
            first._jobs[run.run_id].claimed = False  # its retry: it starts with a write
            await asyncio.wait_for(first.wait_all(), 60)
            assert executed == []
            held = await registry.get_run(run.run_id)
            assert held is not None
            assert (held.status, held.owner) == (Q, "second")
            second._claims._adopt(fresh[0], second._claims.specs())
            second._jobs[run.run_id].claimed = False
            (done,) = await all_finished(registry, [run])
            await second.wait_all()

        assert executed == ["second"]
        assert (done.status, done.owner) == (C, "second")


class TestTakenOverWhileRunning:
    """A manager swept while it still runs a durable run (its heartbeat ran late), the run
    claimed again by another manager: the first one's writes no longer apply to it."""

    async def test_the_late_owner_result_is_discarded(self, registry: RunRegistry) -> None:
        reg = claiming(registry)
        submit_only = manager_for(registry)
        async with submit_only:
            run = await sender(submit_only, "contested").submit(7)
        (first_claim,) = await reg.claim_runs("first", ["contested"], 1)

        owners = ("first", "second")
        entered = {owner: asyncio.Event() for owner in owners}
        finish = {owner: asyncio.Event() for owner in owners}
        managers = [manager_for(registry, owner=owner) for owner in owners]
        for manager in managers:

            @manager.task(name="contested")
            async def contested(i: int, owner: str = manager.owner) -> str:
                entered[owner].set()
                await finish[owner].wait()
                return f"{owner}:{i}"

        first, second = managers
        with capture_logs() as logs:
            async with first, second:
                first._claims._adopt(first_claim, first._claims.specs())
                await asyncio.wait_for(entered["first"].wait(), 60)
                # The first was swept and the run given back and claimed by the second: the
                # record it leaves, in one write (the running managers' claim loops must not
                # take the run in between).
                taken = await registry.update_run(run.run_id, owner="second")
                assert (taken.status, taken.owner) == (R, "second")
                second._claims._adopt(taken, second._claims.specs())
                await asyncio.wait_for(entered["second"].wait(), 60)

                finish["first"].set()  # the first's code ends first: its write is refused
                await asyncio.wait_for(first.wait_all(), 60)
                held = await registry.get_run(run.run_id)
                assert held is not None
                assert (held.status, held.owner, held.result) == (R, "second", None)

                finish["second"].set()
                (done,) = await all_finished(registry, [run])
                await second.wait_all()

        assert (done.status, done.owner, done.result) == (C, "second", "second:7")
        discarded = [e for e in logs if e["event"] == "result_discarded"]
        assert [(e["owner"], e["run_id"]) for e in discarded] == [("first", run.run_id)]


class TestWakeups:
    """The claim loop's timer: one wake-up per time given, in time order, none early."""

    async def test_in_order_and_not_early(self) -> None:
        loop = asyncio.get_running_loop()
        woken: list[datetime] = []
        all_woken = asyncio.Event()

        def wake() -> None:
            woken.append(datetime.now(UTC))
            if len(woken) == 3:
                all_woken.set()

        wakeups = Wakeups(wake)
        now = datetime.now(UTC)
        times = [now + timedelta(seconds=0.2), now + timedelta(seconds=0.1), now]
        for when in times:  # each earlier than the last: the timer moves forward each time
            wakeups.at(loop, when)
        await asyncio.wait_for(all_woken.wait(), 60)
        wakeups.cancel()

        assert all(at >= when for at, when in zip(woken, sorted(times), strict=True))

    async def test_from_another_thread(self) -> None:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        wakeups = Wakeups(woken.set)

        await asyncio.to_thread(wakeups.at, loop, datetime.now(UTC))

        await asyncio.wait_for(woken.wait(), 60)

    async def test_bounded_and_cancelled(self) -> None:
        loop = asyncio.get_running_loop()
        wakeups = Wakeups(lambda: None)
        later = datetime.now(UTC) + timedelta(hours=1)
        for i in range(MAX_PENDING + 10):
            wakeups.at(loop, later + timedelta(seconds=i))

        assert len(wakeups._times) == MAX_PENDING
        wakeups.cancel()
        assert (wakeups._times, wakeups._timer) == ([], None)


class TestDeclaredDead:
    """A manager swept while alive (paused) must not start the durable runs it had claimed."""

    @staticmethod
    def gated(
        registry: RunRegistry, poll_interval: float
    ) -> tuple[BackgroundTaskManager, TaskFunction[..., Any], asyncio.Event, list[int]]:
        """A manager running task ``gated`` one run at a time; each waits for the event.

        Returns the manager, the task, the event and the arguments of the runs executed.
        """
        gate = asyncio.Event()
        executed: list[int] = []
        manager = BackgroundTaskManager(
            registry, group_limits={"g": 1}, heartbeat_interval=0.05, poll_interval=poll_interval
        )

        @manager.task(name="gated", group="g")
        async def gated(i: int) -> None:
            executed.append(i)
            await gate.wait()

        return manager, gated, gate, executed

    async def test_interrupted_runs_do_not_start_here(self) -> None:
        registry = runtrack.InMemoryRunRegistry()
        manager, gated, gate, executed = self.gated(registry, poll_interval=3600)

        async with manager:
            runs = await gated.submit_many([([i], {}) for i in range(3)])

            async def claimed() -> bool:
                return manager.get_active_task_count() == 3 and executed == [0]

            await until(claimed)
            # Swept as if it had missed its lease: the run executing here and the two it
            # claimed (recorded RUNNING by the claim) are recorded interrupted.
            later = datetime.now(UTC) + timedelta(hours=1)
            await registry.interrupt_dead_managers(later, "survivor")

            async def dropped() -> bool:
                return manager.get_active_task_count() <= 1

            await until(dropped)
            gate.set()
            await manager.wait_all(60)
            stored = [await registry.get_run(r.run_id) for r in runs]

        assert executed == [0]
        assert [(r.status, r.error_type) for r in stored[1:] if r is not None] == [
            (F, "RunInterrupted")
        ] * 2

    async def test_runs_claimed_after_the_sweep_are_given_back(self) -> None:
        """A slow heartbeat: swept while alive, the manager claims more before it learns.

        Those later claims are its own in the registry: dropped here without being given
        back, they would stay QUEUED under a live owner, which no survivor ever sweeps.
        """
        registry = _SlowBeats()
        manager, gated, gate, executed = self.gated(registry, poll_interval=0.05)

        async with manager:
            await gated.submit_many([([i], {}) for i in range(3)])

            async def claimed(count: int) -> bool:
                return manager.get_active_task_count() == count

            await until(lambda: claimed(3))
            registry.beats.clear()  # the next heartbeat hangs, as on a registry held up
            later = datetime.now(UTC) + timedelta(hours=1)
            await registry.interrupt_dead_managers(later, "survivor")
            late = await gated.submit_many([([i], {}) for i in range(3, 5)])
            await until(lambda: claimed(5))
            registry.beats.set()  # it learns that it was declared dead, and registers again

            async def registered() -> bool:
                return manager.owner in {m.owner for m in await registry.list_managers()}

            await until(registered)
            gate.set()
            done = await all_finished(registry, late, timeout=30)

        assert [run.status for run in done] == [C, C]
        assert sorted(executed) == [0, 3, 4]


class TestSubmitOptions:
    """``run_here=False`` and ``fn.submit(..., idempotency_key=...)``."""

    async def test_a_submit_only_manager_never_claims(self, registry: RunRegistry) -> None:
        ran: list[str] = []

        async def work(tag: str) -> str:
            ran.append(tag)
            return tag

        web = manager_for(registry, owner="web")
        submit = web.task(name="submit-only", run_here=False)(work)
        async with web:
            run = await submit.submit("a")
            assert web._claims.specs() == {}  # nothing for web to claim: it never polls
            stored = await registry.get_run(run.run_id)
            assert stored is not None
            assert (stored.status, stored.owner) == (Q, None)
            worker = manager_for(registry, owner="worker")
            worker.task(name="submit-only")(work)
            async with worker:
                (done,) = await all_finished(registry, [run])
        assert (done.status, done.owner, ran) == (C, "worker", ["a"])

    async def test_one_run_per_idempotency_key(self, registry: RunRegistry) -> None:
        ran: list[int] = []

        async def charge(invoice: int) -> int:
            ran.append(invoice)
            return invoice

        manager = manager_for(registry)
        fn = manager.task(name="charge-once")(charge)
        async with manager:
            first = await fn.submit(42, idempotency_key="invoice-42")
            again = await fn.submit(42, idempotency_key="invoice-42")
            other = await fn.submit(43, idempotency_key="invoice-43")
            await all_finished(registry, [first, other])
            after = await fn.submit(42, idempotency_key="invoice-42")  # finished < ttl ago
        assert again.run_id == first.run_id == after.run_id
        assert other.run_id != first.run_id
        assert sorted(ran) == [42, 43]
        with pytest.raises(ValueError, match="idempotency_key"):
            await fn.submit(1, idempotency_key="")


class _SlowBeats(runtrack.InMemoryRunRegistry):
    """A memory registry whose heartbeats wait while ``beats`` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.beats = asyncio.Event()
        self.beats.set()

    async def heartbeat_manager(self, owner: str, at: datetime, running: int) -> bool:
        await self.beats.wait()
        return await super().heartbeat_manager(owner, at, running)
