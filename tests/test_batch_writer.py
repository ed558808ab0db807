"""The manager's group-committed writes (BatchWriter) against a registry that can go away."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

import runtrack
from helpers import SAFETY, let_loop_run, wait_event
from runtrack import (
    BackgroundTaskManager,
    InMemoryRunRegistry,
    RegistryUnavailableError,
    Run,
    RunStatus,
)
from runtrack.registry.base import RunWrite


class FlakyBatchRegistry(InMemoryRunRegistry):
    """An in-memory registry seen through write_batch only, which can be taken down.

    Subclassing keeps every read method; the manager still takes the batch path because
    ``write_batch`` is what it sees first for registries other than the plain memory one.
    """

    backend = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.batches: list[int] = []
        self.refused = asyncio.Event()

    async def write_batch(self, writes: Sequence[RunWrite]) -> list[bool]:
        if self.down:
            self.refused.set()
            raise RegistryUnavailableError("flaky", "connection refused")
        self.batches.append(len(writes))
        return await super().write_batch(writes)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> FlakyBatchRegistry:
    registry = FlakyBatchRegistry()
    # Make the manager treat it as a remote registry (no synchronous fast path).
    monkeypatch.setattr(
        "runtrack._recording.InMemoryRunRegistry", type("NotThisOne", (), {}), raising=True
    )
    return registry


async def _echo(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


class TestGroupCommit:
    """Writes of many runs go out together, and a run's lifecycle coalesces."""

    async def test_many_runs_few_batches_and_exact_records(self, flaky: FlakyBatchRegistry) -> None:
        async with BackgroundTaskManager(flaky, max_concurrency=50) as manager:
            ids = [manager.start_task(Run(name="echo"), _echo(i)) for i in range(500)]
            await manager.wait_all(timeout=10)
            for i, run_id in enumerate(ids):
                run = await flaky.get_run(run_id)
                assert run is not None
                assert run.status is RunStatus.COMPLETED
                assert run.result == i
                assert run.started_at is not None
                assert run.finished_at is not None
        # 500 runs x 3 lifecycle writes, sent in far fewer batches.
        assert sum(flaky.batches) < 3 * 500
        assert len(flaky.batches) < 100

    async def test_submit_returns_after_its_write_is_applied(
        self, flaky: FlakyBatchRegistry
    ) -> None:
        async with BackgroundTaskManager(flaky) as manager:
            gate = asyncio.Event()

            async def wait_gate() -> None:
                await gate.wait()

            runs = await asyncio.gather(*(manager.submit(wait_gate) for _ in range(20)))
            for run in runs:
                stored = await flaky.get_run(run.run_id)
                assert stored is not None
                assert stored.status in (RunStatus.QUEUED, RunStatus.RUNNING)
            gate.set()
        assert (await flaky.count_runs())[RunStatus.COMPLETED] == 20


class TestOutage:
    """While the registry is down runs keep executing; their writes land once it is back."""

    async def test_runs_finish_during_outage_and_records_catch_up(
        self, flaky: FlakyBatchRegistry
    ) -> None:
        async with BackgroundTaskManager(flaky, max_concurrency=20, registry_timeout=0.2) as m:
            first = await m.submit(_echo, "before")
            await m.wait(first.run_id, timeout=5)
            flaky.down = True
            executed: list[int] = []
            all_ran = asyncio.Event()

            async def work(i: int) -> int:
                executed.append(i)
                if len(executed) == 200:
                    all_ran.set()
                await asyncio.sleep(0)
                return i

            ids = [m.start_task(Run(name="work"), work(i)) for i in range(200)]
            # The runs execute although nothing can be written.
            await asyncio.wait_for(all_ran.wait(), 5)
            with pytest.raises(RegistryUnavailableError, match="flaky"):
                await m.submit(_echo, "refused")
            assert await flaky.get_run(ids[0]) is None  # nothing written yet
            flaky.down = False
            await m.wait_all(timeout=10)
            for i, run_id in enumerate(ids):
                run = await flaky.get_run(run_id)
                assert run is not None, run_id
                assert run.status is RunStatus.COMPLETED
                assert run.result == i
        counts = await flaky.count_runs()
        assert counts[RunStatus.COMPLETED] == 201
        assert counts[RunStatus.QUEUED] == counts[RunStatus.RUNNING] == 0

    async def test_cancel_during_outage_wins_once_registry_is_back(
        self, flaky: FlakyBatchRegistry
    ) -> None:
        async with BackgroundTaskManager(flaky) as manager:
            started = asyncio.Event()

            async def forever() -> None:
                started.set()
                await asyncio.Event().wait()

            run = await manager.submit(forever)
            await started.wait()
            flaky.down = True
            cancel = asyncio.create_task(manager.cancel_task(run.run_id))
            # The cancel's write met the outage: it waits for the registry, not fails.
            await wait_event(flaky.refused)
            await let_loop_run()
            assert not cancel.done()  # the answer needs the registry
            flaky.down = False
            assert await asyncio.wait_for(cancel, 5) is True
            final = await manager.wait(run.run_id, timeout=5)
            assert final.status is RunStatus.CANCELLED


class TwoInFlightRegistry(InMemoryRunRegistry):
    """Batches block until the test releases them, each on its own; two may be in flight."""

    backend = "two-in-flight"
    batches_in_flight = 2

    def __init__(self) -> None:
        super().__init__()
        self.held: list[asyncio.Future[None]] = []
        self.hold = True
        self.flying: set[str] = set()
        self.overlaps: list[set[str]] = []
        self.landing = asyncio.Event()
        self.in_flight = 0
        self.peak = 0
        self.arrived = asyncio.Event()

    async def write_batch(self, writes: Sequence[RunWrite]) -> list[bool]:
        ids = {w.run_id for w in writes}
        if ids & self.flying:
            self.overlaps.append(ids & self.flying)
        self.flying |= ids
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.hold:
                gate = asyncio.get_running_loop().create_future()
                self.held.append(gate)
                self.arrived.set()
                await gate
            applied = await super().write_batch(writes)
            self.landing.set()
            return applied
        finally:
            self.in_flight -= 1
            self.flying -= ids


@pytest.fixture
def two(monkeypatch: pytest.MonkeyPatch) -> TwoInFlightRegistry:
    monkeypatch.setattr(
        "runtrack._recording.InMemoryRunRegistry", type("NotThisOne", (), {}), raising=True
    )
    return TwoInFlightRegistry()


class TestBatchesInFlight:
    """With ``batches_in_flight = 2`` two batches overlap, but never share a run."""

    async def _held(self, registry: TwoInFlightRegistry, count: int) -> None:
        async with asyncio.timeout(SAFETY):
            while len(registry.held) < count:
                registry.arrived.clear()
                await registry.arrived.wait()

    async def test_second_batch_finishing_first_keeps_every_run_in_order(
        self, two: TwoInFlightRegistry
    ) -> None:
        go = asyncio.Event()

        async def body(i: int) -> int:
            await go.wait()
            return i

        async with BackgroundTaskManager(two, max_concurrency=1000) as manager:
            # 600 inserts: a batch of 500 and one of 100, both held in flight.
            ids = [manager.start_task(Run(name="order"), body(i)) for i in range(600)]
            await self._held(two, 2)
            assert two.peak == 2
            # Every run now starts and finishes while its insert is still in flight.
            go.set()
            for _ in range(5):
                await asyncio.sleep(0)
            assert two.peak == 2  # no third batch, and no run sent twice at once
            two.hold = False
            two.held[1].set_result(None)  # the later batch lands first
            await wait_event(two.landing)
            two.held[0].set_result(None)
            await manager.wait_all(timeout=10)
            for i, run_id in enumerate(ids):
                run = await two.get_run(run_id)
                assert run is not None
                assert (run.status, run.result) == (RunStatus.COMPLETED, i)
        assert two.overlaps == []
        assert two.peak == 2

    async def test_outage_with_two_batches_in_flight_loses_nothing(
        self, two: TwoInFlightRegistry
    ) -> None:
        two.hold = False
        failures = 0
        original = two.write_batch

        async def sometimes_down(writes: Sequence[RunWrite]) -> list[bool]:
            nonlocal failures
            if failures < 6:
                failures += 1
                await asyncio.sleep(0)
                raise RegistryUnavailableError("two-in-flight", "connection reset")
            return await original(writes)

        two.write_batch = sometimes_down  # type: ignore[method-assign]
        async with BackgroundTaskManager(two, max_concurrency=50) as manager:
            ids = [manager.start_task(Run(name="o"), _echo(i)) for i in range(1200)]
            await manager.wait_all(timeout=20)
            for i, run_id in enumerate(ids):
                run = await two.get_run(run_id)
                assert run is not None
                assert (run.status, run.result) == (RunStatus.COMPLETED, i)
        assert failures == 6
        assert two.overlaps == []

    async def test_output_written_before_the_insert_lands_waits_for_it(
        self, two: TwoInFlightRegistry
    ) -> None:
        wrote = asyncio.Event()

        async def body() -> str:
            await runtrack.current_run().write_output("first line\n")
            wrote.set()
            return "ok"

        async with BackgroundTaskManager(two) as manager:
            run_id = manager.start_task(Run(name="out"), body())
            await self._held(two, 1)  # the insert is in flight; the run has started
            for _ in range(5):
                await asyncio.sleep(0)
            assert not wrote.is_set()  # waiting for its record, not failing on its absence
            two.hold = False
            for gate in two.held:
                gate.set_result(None)
            done = await manager.wait(run_id, timeout=5)
        assert (done.status, done.result) == (RunStatus.COMPLETED, "ok")
        assert [c.text for c in await two.get_output(run_id)] == ["first line\n"]


class PoisonRegistry(FlakyBatchRegistry):
    """A batch holding a poisoned run fails with an unexpected error; singles may be cut."""

    def __init__(self) -> None:
        super().__init__()
        self.poison: set[str] = set()
        self.cut_single_at: int | None = None
        self.singles = 0

    async def write_batch(self, writes: Sequence[RunWrite]) -> list[bool]:
        if len(writes) == 1:
            self.singles += 1
            if self.singles == self.cut_single_at:
                raise RegistryUnavailableError("poison", "connection reset")
        if any(w.run_id in self.poison for w in writes):
            raise RuntimeError("driver bug")
        return await super().write_batch(writes)


class TestFailedBatches:
    """A batch that fails for another reason than an outage is sent again one write at a time."""

    @pytest.fixture
    def poison(self, monkeypatch: pytest.MonkeyPatch) -> PoisonRegistry:
        monkeypatch.setattr(
            "runtrack._recording.InMemoryRunRegistry", type("NotThisOne", (), {}), raising=True
        )
        return PoisonRegistry()

    async def test_an_unexpected_error_drops_only_the_bad_write(
        self, poison: PoisonRegistry
    ) -> None:
        gate = asyncio.Event()

        async def wait(i: int) -> int:
            await gate.wait()
            return i

        async with BackgroundTaskManager(poison, max_concurrency=100) as manager:
            ids = [manager.start_task(Run(name="w"), wait(i)) for i in range(20)]
            await manager._writer.flush()  # every QUEUED record is in
            poison.poison.add(ids[7])
            with capture_logs() as logs:
                gate.set()
                await manager.wait_all(timeout=10)
        for i, run_id in enumerate(ids):
            run = await poison.get_run(run_id)
            assert run is not None
            if i == 7:
                assert run.status is RunStatus.RUNNING  # its terminal write was dropped
            else:
                assert (run.status, run.result) == (RunStatus.COMPLETED, i)
        dropped = [e["run_id"] for e in logs if e["event"] == "registry_write_dropped"]
        assert set(dropped) == {ids[7]}

    async def test_an_outage_while_sending_one_by_one_retries_the_batch(
        self, poison: PoisonRegistry
    ) -> None:
        ids = [f"r{i}" for i in range(10)]
        poison.poison.add(ids[5])
        poison.cut_single_at = 3  # the third write sent alone meets an outage
        async with BackgroundTaskManager(poison, max_concurrency=100) as manager:
            with capture_logs() as logs:
                for i, run_id in enumerate(ids):
                    manager.start_task(Run(name="o", run_id=run_id), _echo(i))
                await manager.wait_all(timeout=10)
        for i, run_id in enumerate(ids):
            run = await poison.get_run(run_id)
            if i == 5:
                assert run is None  # every write of the poisoned run was dropped
            else:
                assert run is not None
                assert (run.status, run.result) == (RunStatus.COMPLETED, i)
        assert poison.singles > 3  # the batch went one by one again after the outage
        events = [e["event"] for e in logs]
        assert "registry_unavailable" in events
        assert "registry_available_again" in events
        assert {e["run_id"] for e in logs if e["event"] == "registry_write_dropped"} == {ids[5]}
