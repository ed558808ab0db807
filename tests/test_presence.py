"""Manager presence (`ManagerPresence`): one row per manager, swept by owner and status.

Runs once per backend of the conformance suite (memory, SQLite, PostgreSQL, MariaDB,
Redis) through the ``registry`` fixture.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from runtrack import ManagerInfo, Run, RunRegistry, RunStatus
from runtrack.registry.base import ManagerPresence

Q, R, C, F, X = (
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
)


def now() -> datetime:
    return datetime.now(UTC)


def manager(
    owner: str, *, silent_for: float = 0, lease: float = 30, **fields: object
) -> ManagerInfo:
    beat = now() - timedelta(seconds=silent_for)
    return ManagerInfo(
        owner=owner,
        host="host",
        pid=123,
        started_at=beat - timedelta(seconds=5),
        heartbeat_at=beat,
        lease_seconds=lease,
        **fields,
    )


def presence(registry: RunRegistry) -> ManagerPresence:
    assert isinstance(registry, ManagerPresence)
    return registry


async def add(registry: RunRegistry, run_id: str, owner: str | None, status: RunStatus) -> None:
    finished = now() if status.is_terminal else None
    await registry.add_run(
        Run(run_id=run_id, name="job", owner=owner, status=status, finished_at=finished)
    )


async def status_of(registry: RunRegistry, run_id: str) -> RunStatus:
    run = await registry.get_run(run_id)
    assert run is not None
    return run.status


class TestRows:
    async def test_register_list_heartbeat_unregister(self, registry: RunRegistry) -> None:
        reg = presence(registry)
        assert await reg.list_managers() == []
        b = manager("b", max_concurrency=4)
        a = manager("a")
        await reg.register_manager(b)
        await reg.register_manager(a)
        assert await reg.list_managers() == [a, b]
        later = b.heartbeat_at + timedelta(seconds=1)
        assert await reg.heartbeat_manager("b", later, 3) is True
        (_, got) = await reg.list_managers()
        assert (got.heartbeat_at, got.running, got.max_concurrency) == (later, 3, 4)
        assert (got.host, got.pid, got.lease_seconds) == ("host", 123, 30)
        assert got.started_at == b.started_at
        await reg.unregister_manager("b")
        await reg.unregister_manager("b")  # twice is fine
        assert await reg.list_managers() == [a]
        assert await reg.heartbeat_manager("b", later, 0) is False

    async def test_register_replaces_the_row(self, registry: RunRegistry) -> None:
        reg = presence(registry)
        await reg.register_manager(manager("a", lease=5))
        again = manager("a", lease=9)
        await reg.register_manager(again)
        assert await reg.list_managers() == [again]


class TestSweep:
    async def test_a_dead_managers_runs_are_recorded_interrupted(
        self, registry: RunRegistry
    ) -> None:
        reg = presence(registry)
        await reg.register_manager(manager("dead", silent_for=60, lease=10))
        await reg.register_manager(manager("alive", lease=10))
        await add(registry, "run", "dead", R)
        await add(registry, "queued", "dead", Q)
        await add(registry, "done", "dead", C)
        await add(registry, "other", "alive", R)
        await add(registry, "nobody", None, R)
        swept = await reg.interrupt_dead_managers(now(), "survivor")
        got = {(s.run_id, s.previous, s.status, s.owner) for s in swept}
        assert got == {("run", R, F, "dead"), ("queued", Q, X, "dead")}
        run = await registry.get_run("run")
        assert run is not None
        assert (run.status, run.error_type) == (F, "RunInterrupted")
        assert run.finished_at is not None
        assert run.error_message is not None
        assert "dead" in run.error_message
        assert "survivor" in run.error_message
        queued = await registry.get_run("queued")
        assert queued is not None
        assert (queued.status, queued.error_type) == (X, "RunInterrupted")
        assert queued.error_message is not None
        assert queued.error_message.startswith("never started")
        assert await status_of(registry, "done") is C
        assert await status_of(registry, "other") is R
        assert await status_of(registry, "nobody") is R
        assert [m.owner for m in await reg.list_managers()] == ["alive"]
        # the dead manager learns it at its next heartbeat
        assert await reg.heartbeat_manager("dead", now(), 1) is False
        assert await reg.interrupt_dead_managers(now(), "survivor") == []

    async def test_each_owner_is_judged_by_its_own_lease(self, registry: RunRegistry) -> None:
        reg = presence(registry)
        # silent for 60 s, but its own lease is 120 s: alive, whatever the survivor's lease
        await reg.register_manager(manager("patient", silent_for=60, lease=120))
        await add(registry, "run", "patient", R)
        assert await reg.interrupt_dead_managers(now(), "survivor") == []
        assert await status_of(registry, "run") is R
        swept = await reg.interrupt_dead_managers(now() + timedelta(seconds=61), "survivor")
        assert [s.run_id for s in swept] == ["run"]

    async def test_a_manager_never_sweeps_itself(self, registry: RunRegistry) -> None:
        reg = presence(registry)
        await reg.register_manager(manager("me", silent_for=60, lease=10))
        await add(registry, "run", "me", R)
        assert await reg.interrupt_dead_managers(now(), "me") == []
        assert await status_of(registry, "run") is R

    async def test_a_heartbeat_that_moved_is_not_swept(self, registry: RunRegistry) -> None:
        reg = presence(registry)
        await reg.register_manager(manager("late", silent_for=60, lease=10))
        await add(registry, "run", "late", R)
        (seen,) = await reg.list_managers()
        assert await reg.heartbeat_manager("late", now(), 1) is True
        # a survivor that read the old heartbeat loses its compare-and-set
        assert await reg._interrupt_owner(seen, now(), "survivor") == []  # type: ignore[attr-defined]
        assert await status_of(registry, "run") is R

    async def test_two_survivors_racing_record_each_run_once(self, registry: RunRegistry) -> None:
        reg = presence(registry)
        await reg.register_manager(manager("dead", silent_for=60, lease=10))
        ids = [f"run-{i}" for i in range(30)]
        for i, run_id in enumerate(ids):
            await add(registry, run_id, "dead", R if i % 3 else Q)
        at = now()
        first, second = await asyncio.gather(
            reg.interrupt_dead_managers(at, "a"), reg.interrupt_dead_managers(at, "b")
        )
        recorded = [s.run_id for s in first] + [s.run_id for s in second]
        assert sorted(recorded) == sorted(ids)
        assert not (first and second)  # one sweep per dead owner
        counts = await registry.count_runs()
        assert (counts[F], counts[X], counts[R], counts[Q]) == (20, 10, 0, 0)


class TestCancelledRuns:
    async def test_cancelled_runs_of_an_owner_since(self, registry: RunRegistry) -> None:
        reg = presence(registry)
        start = now() - timedelta(seconds=1)
        await add(registry, "mine", "me", R)
        await add(registry, "queued", "me", Q)
        await add(registry, "theirs", "other", R)
        await add(registry, "done", "me", C)
        assert await reg.cancelled_runs("me", start) == []
        for run_id in ("mine", "queued", "theirs"):
            assert await registry.transition(run_id, X, finished_at=now()) is not None
        assert sorted(await reg.cancelled_runs("me", start)) == ["mine", "queued"]
        assert await reg.cancelled_runs("me", now() + timedelta(seconds=5)) == []


def test_manager_info_validation() -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        manager("a", lease=0)
    with pytest.raises(ValueError, match="owner"):
        manager("")
    info = manager("a", silent_for=20, lease=10)
    assert info.expired(now())
    assert not manager("a", silent_for=5, lease=10).expired(now())
