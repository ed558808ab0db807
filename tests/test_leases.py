"""Leases: runs whose manager stopped heartbeating are recorded FAILED (RunInterrupted)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from helpers import SAFETY, DelegatingRegistry
from runtrack import (
    BackgroundTaskManager,
    InMemoryRunRegistry,
    ManagerInfo,
    Run,
    RunEvent,
    RunRegistry,
    RunStatus,
)
from runtrack._models import utcnow
from runtrack.registry.base import ManagerPresence, RunWrite
from runtrack.registry.sql import SQLRunRegistry

R, F = RunStatus.RUNNING, RunStatus.FAILED
#: Seconds a child Python process may take to import runtrack and start its run.
CHILD_START = 60.0


class FailedRuns:
    """A listener that counts interrupted runs and wakes a waiter at a target."""

    def __init__(self, target: int) -> None:
        self.seen: Counter[str] = Counter()
        self.events: list[RunEvent] = []
        self.target = target
        self.done = asyncio.Event()

    def __call__(self, event: RunEvent) -> None:
        if event.error_type == "RunInterrupted":
            self.seen[event.run_id] += 1
            self.events.append(event)
            if len(self.seen) >= self.target:
                self.done.set()

    async def wait(self) -> None:
        async with asyncio.timeout(SAFETY):
            await self.done.wait()


def running(run_id: str, owner: str, *, silent_for: float | None, beat: bool = True) -> Run:
    """A RUNNING run of ``owner`` last heard of ``silent_for`` seconds ago."""
    last = utcnow() - timedelta(seconds=silent_for or 0)
    return Run(
        run_id=run_id,
        name="job",
        status=R,
        owner=owner,
        created_at=last - timedelta(seconds=1),
        started_at=last,
        heartbeat_at=last if beat else None,
    )


async def register(
    registry: RunRegistry, owner: str, *, silent_for: float, lease: float = 5
) -> None:
    """Register ``owner`` as a manager last heard of ``silent_for`` seconds ago."""
    assert isinstance(registry, ManagerPresence)
    beat = utcnow() - timedelta(seconds=silent_for)
    await registry.register_manager(
        ManagerInfo(owner=owner, started_at=beat, heartbeat_at=beat, lease_seconds=lease)
    )


async def _silent_managers(registry: RunRegistry, *, presence: bool) -> None:
    if presence:
        await register(registry, "dead:1", silent_for=120)
        await register(registry, "dead:2", silent_for=120)
        await register(registry, "alive:1", silent_for=0, lease=60)
    await registry.add_run(running("orphan", "dead:1", silent_for=120))
    await registry.add_run(running("never-beat", "dead:2", silent_for=120, beat=False))
    await registry.add_run(running("alive", "alive:1", silent_for=0))
    await registry.add_run(running("mine", "me", silent_for=120))
    unowned = running("unowned", "x", silent_for=120).model_copy(update={"owner": None})
    await registry.add_run(unowned)  # not started by a manager: no lease applies
    # queued by dead:1 before it went silent: it will never start it
    await registry.add_run(
        Run(run_id="stranded", owner="dead:1", created_at=utcnow() - timedelta(seconds=300))
    )
    # Queued under that name after it was last seen. Without a managers row, that is a
    # restarted process of that name; with one, a restarted process registers again.
    await registry.add_run(Run(run_id="queued", owner="dead:1"))
    swept = {"orphan", "never-beat", "stranded"} | ({"queued"} if presence else set())
    failed = FailedRuns(target=len(swept))
    manager = BackgroundTaskManager(registry, owner="me", heartbeat_interval=0.02, lease=5)
    manager.add_listener(failed)
    async with manager:
        await failed.wait()
    assert set(failed.seen) == swept
    stranded = await registry.get_run("stranded")
    assert stranded is not None
    assert (stranded.status, stranded.error_type) == (RunStatus.CANCELLED, "RunInterrupted")
    assert stranded.error_message is not None
    assert stranded.error_message.startswith("never started")
    for run_id in ("orphan", "never-beat"):
        run = await registry.get_run(run_id)
        assert run is not None
        assert (run.status, run.error_type) == (F, "RunInterrupted")
        assert run.error_message is not None
        assert "stopped heartbeating" in run.error_message
        assert run.owner is not None
        assert run.owner in run.error_message
        assert run.finished_at is not None
    statuses = {r.run_id: r.status for r in await registry.list_runs()}
    assert statuses["alive"] is R  # within its lease
    assert statuses["mine"] is R  # a manager never interrupts runs under its own name
    assert statuses["unowned"] is R
    assert statuses["queued"] is (RunStatus.CANCELLED if presence else RunStatus.QUEUED)
    assert {e.status for e in failed.events} == {F, RunStatus.CANCELLED}


class TestLeases:
    async def test_a_silent_managers_runs_are_interrupted(self, registry: RunRegistry) -> None:
        await _silent_managers(registry, presence=True)

    async def test_without_a_managers_table_runs_are_judged_by_their_heartbeat(self) -> None:
        await _silent_managers(DelegatingRegistry(), presence=False)

    async def test_two_managers_record_each_run_once(self, registry: RunRegistry) -> None:
        ids = [f"dead-{i}" for i in range(20)]
        await register(registry, "dead:1", silent_for=120)
        for run_id in ids:
            await registry.add_run(running(run_id, "dead:1", silent_for=120))
        failed = FailedRuns(target=len(ids))
        first = BackgroundTaskManager(registry, owner="a", heartbeat_interval=0.01, lease=5)
        second = BackgroundTaskManager(registry, owner="b", heartbeat_interval=0.01, lease=5)
        first.add_listener(failed)
        second.add_listener(failed)
        async with first, second:
            await failed.wait()
            # a few more rounds in which both keep looking: nothing is recorded twice
            for _ in range(3):
                await first._heartbeat.interrupt_expired()
                await second._heartbeat.interrupt_expired()
        assert set(failed.seen) == set(ids)
        assert set(failed.seen.values()) == {1}
        counts = await registry.count_runs()
        assert counts[F] == len(ids)

    def test_lease_must_outlast_the_heartbeat(self) -> None:
        with pytest.raises(ValueError, match="lease"):
            BackgroundTaskManager(heartbeat_interval=10, lease=5)
        with pytest.raises(ValueError, match="lease"):
            BackgroundTaskManager(lease=float("inf"))


_DOOMED = textwrap.dedent(
    """
    import asyncio, logging, sys
    import structlog
    from runtrack import BackgroundTaskManager, Run, RunStatus

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    from runtrack.registry.sql import SQLRunRegistry

    async def main() -> None:
        manager = BackgroundTaskManager(
            SQLRunRegistry(sys.argv[1]), owner="doomed", heartbeat_interval=0.05,
            max_concurrency=1,
        )
        started = asyncio.Event()
        manager.add_listener(lambda e: e.status is RunStatus.RUNNING and started.set())
        async with manager:
            # both queued before the first one starts: created before its last sign of life
            run_id = manager.start_task(Run(name="long"), asyncio.sleep(3600))
            waiting_id = manager.start_task(Run(name="behind"), asyncio.sleep(1))
            await started.wait()
            await manager._writer.flush()  # RUNNING and QUEUED are in the file
            print(run_id, waiting_id, flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_killed_process_runs_are_interrupted(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    doomed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DOOMED,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert doomed.stdout is not None
        async with asyncio.timeout(CHILD_START):
            line = (await doomed.stdout.readline()).decode().split()
        assert len(line) == 2, "the child process did not start its runs"
        run_id, queued_id = line
    finally:
        doomed.kill()  # SIGKILL: no shutdown, no last write, as in a crash
        await doomed.wait()

    async with SQLRunRegistry(url) as registry:
        before = await registry.get_run(run_id)
        assert before is not None
        assert (before.status, before.owner) == (R, "doomed")
        failed = FailedRuns(target=2)
        survivor = BackgroundTaskManager(registry, heartbeat_interval=0.05, lease=0.5)
        survivor.add_listener(failed)
        async with survivor:
            await failed.wait()
        after = await registry.get_run(run_id)
        never = await registry.get_run(queued_id)
    assert never is not None
    assert (never.status, never.error_type) == (RunStatus.CANCELLED, "RunInterrupted")
    assert after is not None
    assert (after.status, after.error_type) == (F, "RunInterrupted")
    assert after.error_message is not None
    assert "doomed" in after.error_message


class CountingRegistry(InMemoryRunRegistry):
    """Counts what a manager's heartbeats read and write."""

    def __init__(self) -> None:
        super().__init__()
        self.single_reads = 0
        self.status_reads: list[int] = []
        self.run_writes: list[int] = []
        self.beats = 0
        self.polls = 0
        self.beaten = asyncio.Event()

    async def get_run(self, run_id: str) -> Run | None:
        self.single_reads += 1
        return await super().get_run(run_id)

    async def get_statuses(self, run_ids: Sequence[str]) -> dict[str, RunStatus]:
        self.status_reads.append(len(run_ids))
        return await super().get_statuses(run_ids)

    async def write_batch(self, writes: Sequence[RunWrite]) -> list[bool]:
        self.run_writes.extend(1 for w in writes if "heartbeat_at" in w.changes and w.to is None)
        return await super().write_batch(writes)

    async def heartbeat_manager(self, owner: str, at: datetime, running: int) -> bool:
        self.beats += 1
        if self.beats >= 10 and self.polls >= 10:
            self.beaten.set()
        return await super().heartbeat_manager(owner, at, running)

    async def cancelled_runs(self, owner: str, since: datetime) -> list[str]:
        self.polls += 1
        return await super().cancelled_runs(owner, since)


async def test_heartbeats_cost_one_write_per_manager_whatever_the_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seen as a remote registry: writes through the batch writer, reads through the API.
    monkeypatch.setattr(
        "runtrack._recording.InMemoryRunRegistry", type("NotThisOne", (), {}), raising=True
    )
    registry = CountingRegistry()
    gate = asyncio.Event()
    async with BackgroundTaskManager(
        registry, owner="me", heartbeat_interval=0.01, poll_interval=0.01
    ) as manager:
        for _ in range(20):
            manager.start_task(Run(name="wait"), gate.wait())
        async with asyncio.timeout(SAFETY):
            await registry.beaten.wait()
        (me,) = await registry.list_managers()
        gate.set()
    assert (me.owner, me.running, me.lease_seconds) == ("me", 20, 0.06)
    # no run is read or written by a heartbeat or a cancel poll
    assert (registry.single_reads, registry.status_reads, registry.run_writes) == (0, [], [])
    assert await registry.list_managers() == []  # unregistered at shutdown
