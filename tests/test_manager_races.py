"""Deliberate races between the manager's operations.

Each test lines up two operations that compete for one run (cancel against completion,
shutdown against submit, a timeout against completion, many cancels at once...) and
checks that whichever wins, the run ends in exactly one terminal status that the registry,
the listeners, ``wait`` and ``stats`` all agree on. The races are steered by events and
futures the test resolves, and by a parametrized number of event-loop iterations between
the two operations, never by sleeping; timeouts are only safety bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import (
    ACTIVE,
    SAFETY,
    DelegatingRegistry,
    Gate,
    ManagerFactory,
    let_loop_run,
    shut_down,
    wait_event,
)
from runtrack import (
    BackgroundTaskManager,
    DuplicateRunError,
    InMemoryRunRegistry,
    ManagerClosedError,
    Retry,
    Run,
    RunEvent,
    RunRegistry,
    RunStatus,
)

#: Event-loop iterations between the two racing operations: 0 means "in the same tick".
YIELDS = list(range(8))


@pytest.fixture(params=["memory", "queued-writer"])
def manager_registry(request: pytest.FixtureRequest, runtrack_registry: InMemoryRunRegistry) -> Any:
    """The registry managers write to: the in-memory one, or it behind the queued writer.

    Tests read ``runtrack_registry`` directly, which is the same data either way.
    """
    if request.param == "memory":
        return runtrack_registry
    return DelegatingRegistry(runtrack_registry)


@pytest.fixture
async def make_manager(
    manager_registry: RunRegistry, runtrack_registry: InMemoryRunRegistry
) -> AsyncIterator[ManagerFactory]:
    """Build managers on ``manager_registry``; every one is shut down and checked after the test."""
    made: list[BackgroundTaskManager] = []

    def make(**options: Any) -> BackgroundTaskManager:
        options.setdefault("heartbeat_interval", 0.02)
        options.setdefault("cancel_timeout", SAFETY)
        manager = BackgroundTaskManager(manager_registry, **options)
        made.append(manager)
        return manager

    yield make
    leaked: list[str] = []
    for manager in made:
        leaked += await shut_down(manager)
    assert not await runtrack_registry.list_runs(status=ACTIVE), "a run was left active"
    if leaked:
        pytest.fail(f"make_manager: runs still active after the test: {leaked}")


class Outcome:
    """Collects a manager's events and checks that a run ended exactly once."""

    def __init__(self, manager: BackgroundTaskManager, registry: InMemoryRunRegistry) -> None:
        self.manager = manager
        self.registry = registry
        self.events: list[RunEvent] = []
        manager.add_listener(self.events.append)

    async def final(self, run_id: str) -> Run:
        """Wait for the run and check that every view agrees on its one terminal status."""
        finished = await self.manager.wait(run_id, timeout=SAFETY)
        assert finished.status.is_terminal
        recorded = await self.registry.get_run(run_id)
        assert recorded is not None
        assert recorded.status is finished.status
        terminal = [e.status for e in self.events if e.run_id == run_id and e.status.is_terminal]
        assert terminal == [finished.status], f"terminal events {terminal}"
        return finished

    async def check_counts(self) -> None:
        """The manager's counts agree with the registry's (it holds only this manager's runs)."""
        await self.manager.wait_all(timeout=SAFETY)
        assert self.manager.stats().counts == await self.registry.count_runs()


# -- cancel against completion ----------------------------------------------------------


class TestCancelVersusCompletion:
    """cancel_task and a run's own ending race; exactly one of them decides the outcome."""

    @pytest.mark.parametrize("yields", YIELDS)
    async def test_cancel_vs_completion(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, yields: int
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, runtrack_registry)
        gate = Gate()
        run = await manager.submit(gate.body, name="race")
        await wait_event(gate.started)

        gate.open("finished")
        await let_loop_run(yields)
        cancelled = await manager.cancel_task(run.run_id)

        finished = await outcome.final(run.run_id)
        if cancelled:
            assert finished.status is RunStatus.CANCELLED
            assert finished.result is None
        else:
            assert finished.status is RunStatus.COMPLETED
            assert finished.result == "finished"
        if yields == 0:
            # The run was still RUNNING in the registry when cancel_task was called.
            assert cancelled
        await outcome.check_counts()

    @pytest.mark.parametrize("yields", YIELDS)
    async def test_cancel_vs_failure(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, yields: int
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, runtrack_registry)
        gate = Gate()
        run = await manager.submit(gate.body, name="race")
        await wait_event(gate.started)

        gate.fail(ValueError("lost the race"))
        await let_loop_run(yields)
        cancelled = await manager.cancel_task(run.run_id)

        finished = await outcome.final(run.run_id)
        if cancelled:
            assert (finished.status, finished.error_type) == (RunStatus.CANCELLED, None)
        else:
            assert (finished.status, finished.error_type) == (RunStatus.FAILED, "ValueError")
        await outcome.check_counts()

    @pytest.mark.parametrize("yields", YIELDS)
    async def test_cancel_vs_completion_of_a_coroutine_that_swallows_cancellation(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, yields: int
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, runtrack_registry)
        gate = Gate(swallow_cancel=True)
        run = await manager.submit(gate.body, name="stubborn")
        await wait_event(gate.started)

        gate.open("finished")
        await let_loop_run(yields)
        cancelled = await manager.cancel_task(run.run_id)

        finished = await outcome.final(run.run_id)
        expected = RunStatus.CANCELLED if cancelled else RunStatus.COMPLETED
        assert finished.status is expected
        await outcome.check_counts()

    @pytest.mark.parametrize("yields", YIELDS)
    async def test_cancel_from_another_manager_vs_completion(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, yields: int
    ) -> None:
        owner, other = make_manager(), make_manager()
        outcome = Outcome(owner, runtrack_registry)
        gate = Gate()
        run = await owner.submit(gate.body, name="shared")
        await wait_event(gate.started)

        gate.open("finished")
        await let_loop_run(yields)
        cancelled = await other.cancel_task(run.run_id)

        finished = await outcome.final(run.run_id)
        assert finished.status is (RunStatus.CANCELLED if cancelled else RunStatus.COMPLETED)
        await outcome.check_counts()

    @pytest.mark.parametrize("yields", YIELDS)
    async def test_cancel_vs_retry(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, yields: int
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, runtrack_registry)
        failed = asyncio.Event()
        calls = 0

        async def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                failed.set()
                raise ConnectionError("first attempt")
            return "second attempt"

        run = await manager.submit(flaky, retry=Retry(attempts=2, backoff=0))
        await wait_event(failed)
        await let_loop_run(yields)
        cancelled = await manager.cancel_task(run.run_id)

        finished = await outcome.final(run.run_id)
        if cancelled:
            assert finished.status is RunStatus.CANCELLED
        else:
            assert (finished.status, finished.attempt) == (RunStatus.COMPLETED, 2)
        await outcome.check_counts()


# -- many cancels, and cancels under a saturated limit -------------------------------------


class TestConcurrentCancels:
    """Many cancels of one run: one wins, none waits for a slot."""

    @pytest.mark.parametrize("state", ["running", "queued"])
    async def test_many_concurrent_cancels_of_one_run(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, state: str
    ) -> None:
        manager = make_manager(max_concurrency=1)
        outcome = Outcome(manager, runtrack_registry)
        blocker, target = Gate(), Gate()
        if state == "queued":
            await manager.submit(blocker.body, name="blocker")
            await wait_event(blocker.started)
        run = await manager.submit(target.body, name="target")
        if state == "running":
            await wait_event(target.started)

        async with asyncio.timeout(SAFETY):
            results = await asyncio.gather(*(manager.cancel_task(run.run_id) for _ in range(20)))
        assert results.count(True) == 1
        finished = await outcome.final(run.run_id)
        assert finished.status is RunStatus.CANCELLED
        assert target.starts == (1 if state == "running" else 0)
        blocker.open()
        await outcome.check_counts()

    async def test_many_concurrent_cancels_of_a_coroutine_that_swallows_them(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, runtrack_registry)
        gate = Gate(swallow_cancel=True)
        run = await manager.submit(gate.body)
        await wait_event(gate.started)
        async with asyncio.timeout(SAFETY):
            results = await asyncio.gather(*(manager.cancel_task(run.run_id) for _ in range(10)))
        assert results.count(True) == 1
        assert (await outcome.final(run.run_id)).status is RunStatus.CANCELLED
        await outcome.check_counts()

    async def test_cancelling_every_waiting_run_while_saturated_returns_at_once(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        manager = make_manager(max_concurrency=2)
        outcome = Outcome(manager, runtrack_registry)
        blockers = [Gate(), Gate()]
        for gate in blockers:
            await manager.submit(gate.body, name="blocker")
        for gate in blockers:
            await wait_event(gate.started)
        waiting = [Gate() for _ in range(10)]
        runs = [await manager.submit(gate.body, name="waiting") for gate in waiting]

        # The blockers never give up their slots while the cancels run.
        async with asyncio.timeout(0.5):
            results = await asyncio.gather(*(manager.cancel_task(r.run_id) for r in runs))
        assert results == [True] * len(runs)
        assert not any(g.cancelled.is_set() for g in blockers)
        assert (manager.stats().running, manager.stats().queued) == (2, 0)
        for run in runs:
            assert (await runtrack_registry.get_run(run.run_id)) is not None
            assert (await outcome.final(run.run_id)).status is RunStatus.CANCELLED
        for gate in blockers:
            gate.open()
        await outcome.check_counts()
        assert all(gate.starts == 0 for gate in waiting)

    @pytest.mark.parametrize("yields", YIELDS)
    async def test_cancel_a_waiting_run_as_its_slot_frees(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, yields: int
    ) -> None:
        manager = make_manager(max_concurrency=1)
        outcome = Outcome(manager, runtrack_registry)
        blocker, waiting = Gate(), Gate()
        await manager.submit(blocker.body, name="blocker")
        run = await manager.submit(waiting.body, name="waiting")
        await wait_event(blocker.started)

        blocker.open()
        await let_loop_run(yields)
        assert await manager.cancel_task(run.run_id) is True

        assert (await outcome.final(run.run_id)).status is RunStatus.CANCELLED
        if waiting.starts:
            assert waiting.cancelled.is_set()
        await outcome.check_counts()


# -- timeouts against completion -----------------------------------------------------------


class TestTimeoutVersusCompletion:
    """A run's timeout and its completion land in the same instant; one of them wins."""

    @pytest.mark.parametrize("offset", [-0.004, -0.002, -0.001, 0.0, 0.001, 0.002, 0.004])
    async def test_timeout_vs_completion(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, offset: float
    ) -> None:
        timeout = 0.02
        manager = make_manager()
        outcome = Outcome(manager, runtrack_registry)
        gate = Gate()
        run = await manager.submit(gate.body, timeout=timeout)
        await wait_event(gate.started)
        # The timeout was armed when the run started, just before this point: completion is
        # scheduled on the same clock, around the deadline.
        asyncio.get_running_loop().call_later(timeout + offset, gate.open, "in time")

        finished = await outcome.final(run.run_id)
        if finished.status is RunStatus.COMPLETED:
            assert finished.result == "in time"
        else:
            assert (finished.status, finished.error_type) == (RunStatus.FAILED, "TimeoutError")
        await outcome.check_counts()

    @pytest.mark.parametrize("offset", [-0.004, -0.002, -0.001, 0.0, 0.001, 0.002, 0.004])
    async def test_cancel_vs_timeout(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, offset: float
    ) -> None:
        timeout = 0.02
        manager = make_manager()
        outcome = Outcome(manager, runtrack_registry)
        gate = Gate()
        run = await manager.submit(gate.body, timeout=timeout)
        await wait_event(gate.started)
        loop = asyncio.get_running_loop()
        cancelling: asyncio.Future[bool] = loop.create_future()

        def cancel_now() -> None:
            task = asyncio.create_task(manager.cancel_task(run.run_id))
            task.add_done_callback(lambda t: cancelling.set_result(t.result()))

        loop.call_later(timeout + offset, cancel_now)
        async with asyncio.timeout(SAFETY):
            cancelled = await cancelling

        finished = await outcome.final(run.run_id)
        if cancelled:
            assert finished.status is RunStatus.CANCELLED
        else:
            assert (finished.status, finished.error_type) == (RunStatus.FAILED, "TimeoutError")
        await outcome.check_counts()


# -- shutdown against submit and cancel ----------------------------------------------------


class TestShutdownVersusSubmit:
    """A run submitted as shutdown begins is either refused or ended by the shutdown."""

    @pytest.mark.parametrize("first", ["submit", "shutdown"])
    @pytest.mark.parametrize("yields", [0, 1, 2, 4])
    @pytest.mark.parametrize("grace", [0.0, SAFETY])
    async def test_shutdown_vs_submit(
        self,
        make_manager: ManagerFactory,
        runtrack_registry: InMemoryRunRegistry,
        first: str,
        yields: int,
        grace: float,
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, runtrack_registry)
        # Start the manager so shutdown has something to stop.
        await manager.wait((await manager.submit(_noop)).run_id, timeout=SAFETY)

        def start_submit() -> asyncio.Task[Run]:
            return asyncio.create_task(manager.submit(_noop, name="late"))

        def start_shutdown() -> asyncio.Task[None]:
            return asyncio.create_task(manager.shutdown(grace=grace))

        if first == "submit":
            submitting = start_submit()
            await let_loop_run(yields)
            shutting = start_shutdown()
        else:
            shutting = start_shutdown()
            await let_loop_run(yields)
            submitting = start_submit()

        async with asyncio.timeout(SAFETY * 2):
            submitted, _ = await asyncio.gather(submitting, shutting, return_exceptions=True)
        if isinstance(submitted, Run):
            recorded = await runtrack_registry.get_run(submitted.run_id)
            assert recorded is not None
            assert recorded.status in {RunStatus.COMPLETED, RunStatus.CANCELLED}
            terminal = [e for e in outcome.events if e.run_id == submitted.run_id]
            assert [e.status for e in terminal if e.status.is_terminal] == [recorded.status]
        else:
            assert isinstance(submitted, ManagerClosedError), submitted
        assert not await runtrack_registry.list_runs(status=ACTIVE)
        assert manager.get_active_task_count() == 0
        assert manager.stats().counts == await runtrack_registry.count_runs()

    @pytest.mark.parametrize("grace", [0.0, SAFETY])
    async def test_shutdown_while_a_queued_write_is_in_flight(
        self, runtrack_registry: InMemoryRunRegistry, grace: float
    ) -> None:
        registry = DelegatingRegistry(runtrack_registry)
        manager = BackgroundTaskManager(registry, heartbeat_interval=0.02)
        await manager.wait((await manager.submit(_noop)).run_id, timeout=SAFETY)

        registry.hold_add_run = asyncio.Event()
        submitting = asyncio.create_task(manager.submit(_noop, name="in-flight"))
        await wait_event(registry.adding)
        shutting = asyncio.create_task(manager.shutdown(grace=grace))
        await let_loop_run(5)
        registry.hold_add_run.set()

        async with asyncio.timeout(SAFETY * 2):
            submitted, shut = await asyncio.gather(submitting, shutting, return_exceptions=True)
        assert shut is None, shut
        if isinstance(submitted, Run):
            assert (await runtrack_registry.get_run(submitted.run_id)) is not None
        else:
            assert isinstance(submitted, ManagerClosedError), submitted
        assert not await runtrack_registry.list_runs(status=ACTIVE)
        assert manager.get_active_task_count() == 0

    @pytest.mark.parametrize("yields", YIELDS)
    async def test_shutdown_vs_cancel(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, yields: int
    ) -> None:
        manager = make_manager(max_concurrency=1)
        outcome = Outcome(manager, runtrack_registry)
        running, queued = Gate(), Gate()
        running_run = await manager.submit(running.body)
        queued_run = await manager.submit(queued.body)
        await wait_event(running.started)

        shutting = asyncio.create_task(manager.shutdown(grace=0))
        await let_loop_run(yields)
        async with asyncio.timeout(SAFETY):
            results = await asyncio.gather(
                manager.cancel_task(running_run.run_id), manager.cancel_task(queued_run.run_id)
            )
            await shutting
        assert all(isinstance(r, bool) for r in results)
        for run in (running_run, queued_run):
            assert (await outcome.final(run.run_id)).status is RunStatus.CANCELLED
        assert queued.starts == 0
        assert manager.stats().counts == await runtrack_registry.count_runs()

    @pytest.mark.parametrize("yields", YIELDS)
    async def test_shutdown_vs_completion(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, yields: int
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, runtrack_registry)
        gate = Gate()
        run = await manager.submit(gate.body)
        await wait_event(gate.started)

        gate.open("just in time")
        await let_loop_run(yields)
        async with asyncio.timeout(SAFETY):
            await manager.shutdown(grace=0)

        finished = await outcome.final(run.run_id)
        assert finished.status in {RunStatus.COMPLETED, RunStatus.CANCELLED}
        if finished.status is RunStatus.COMPLETED:
            assert finished.result == "just in time"
        assert manager.stats().counts == await runtrack_registry.count_runs()


# -- the same id submitted twice at once -----------------------------------------------------


class TestDuplicateSubmits:
    """Two submits of one run id at once: exactly one is accepted."""

    @pytest.mark.parametrize("count", [2, 5])
    async def test_concurrent_submits_of_one_id(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, count: int
    ) -> None:
        manager = make_manager()
        gates = [Gate() for _ in range(count)]
        results = await asyncio.gather(
            *(manager.submit(g.body, run_id="only-once") for g in gates),
            return_exceptions=True,
        )
        accepted = [r for r in results if isinstance(r, Run)]
        refused = [r for r in results if isinstance(r, DuplicateRunError)]
        assert (len(accepted), len(refused)) == (1, count - 1), results
        for gate in gates:
            gate.open()
        await manager.wait_all(timeout=SAFETY)
        assert sum(g.starts for g in gates) == 1
        assert sum((await runtrack_registry.count_runs()).values()) == 1
        assert await manager.cancel_task("only-once") is False

    @pytest.mark.parametrize("count", [2, 5])
    async def test_concurrent_submits_across_managers(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry, count: int
    ) -> None:
        managers = [make_manager() for _ in range(count)]
        gates = [Gate() for _ in range(count)]
        results = await asyncio.gather(
            *(m.submit(g.body, run_id="only-once") for m, g in zip(managers, gates, strict=True)),
            return_exceptions=True,
        )
        accepted = [r for r in results if isinstance(r, Run)]
        assert len(accepted) == 1, results
        assert all(isinstance(r, DuplicateRunError) for r in results if not isinstance(r, Run))
        for gate in gates:
            gate.open()
        for manager in managers:
            await manager.wait_all(timeout=SAFETY)
        assert sum(g.starts for g in gates) == 1
        assert sum((await runtrack_registry.count_runs()).values()) == 1


async def _noop() -> None:
    return None
