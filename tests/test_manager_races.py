"""Deliberate races between the manager's operations.

Each test lines up two operations that compete for one run (cancel against completion,
shutdown against submit, a timeout against completion, many cancels at once...) and
checks that whichever wins, the run ends in exactly one terminal status that the registry,
the listeners, ``wait`` and ``stats`` all agree on. The races are steered by events and
futures the test resolves, and by a parametrized number of event-loop iterations between
the two operations, never by sleeping; timeouts are only safety bounds.

The tests read the registry through the ``store`` fixture and build managers with
``make_manager``; ``test_races_backends.py`` runs the same classes on SQLite, PostgreSQL
and Redis by overriding those fixtures (and the ``yields`` and ``offset`` parameters).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from helpers import (
    ACTIVE,
    SAFETY,
    DelegatingRegistry,
    Gate,
    ManagerFactory,
    let_loop_run,
    manager_factory,
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
#: Seconds from a run's timeout deadline to the competing completion or cancel.
OFFSETS = [-0.004, -0.002, -0.001, 0.0, 0.001, 0.002, 0.004]


@pytest.fixture(params=YIELDS)
def yields(request: pytest.FixtureRequest) -> int:
    """Event-loop iterations between the two racing operations."""
    value: int = request.param
    return value


@pytest.fixture(params=OFFSETS)
def offset(request: pytest.FixtureRequest) -> float:
    """Seconds from a run's timeout deadline to the operation racing it."""
    value: float = request.param
    return value


@pytest.fixture
def store(runtrack_registry: InMemoryRunRegistry) -> RunRegistry:
    """The registry the test reads: it holds only this test's runs."""
    return runtrack_registry


@pytest.fixture(params=["memory", "queued-writer"])
def manager_registry(request: pytest.FixtureRequest, store: InMemoryRunRegistry) -> Any:
    """The registry managers write to: ``store``, or it behind the queued writer."""
    if request.param == "memory":
        return store
    return DelegatingRegistry(store)


@pytest.fixture
async def make_manager(
    manager_registry: RunRegistry, store: RunRegistry
) -> AsyncIterator[ManagerFactory]:
    """Build managers on ``manager_registry``; every one is shut down and checked after the test."""
    async with manager_factory(manager_registry, store) as make:
        yield make


class Outcome:
    """Collects a manager's events and checks that a run ended exactly once."""

    def __init__(self, manager: BackgroundTaskManager, registry: RunRegistry) -> None:
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

    async def test_cancel_vs_completion(
        self, make_manager: ManagerFactory, store: RunRegistry, yields: int
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, store)
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

    async def test_cancel_vs_failure(
        self, make_manager: ManagerFactory, store: RunRegistry, yields: int
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, store)
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

    async def test_cancel_vs_completion_of_a_coroutine_that_swallows_cancellation(
        self, make_manager: ManagerFactory, store: RunRegistry, yields: int
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, store)
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

    async def test_cancel_from_another_manager_vs_completion(
        self, make_manager: ManagerFactory, store: RunRegistry, yields: int
    ) -> None:
        owner, other = make_manager(), make_manager()
        outcome = Outcome(owner, store)
        gate = Gate()
        run = await owner.submit(gate.body, name="shared")
        await wait_event(gate.started)

        gate.open("finished")
        await let_loop_run(yields)
        cancelled = await other.cancel_task(run.run_id)

        finished = await outcome.final(run.run_id)
        assert finished.status is (RunStatus.CANCELLED if cancelled else RunStatus.COMPLETED)
        await outcome.check_counts()

    async def test_cancel_vs_retry(
        self, make_manager: ManagerFactory, store: RunRegistry, yields: int
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, store)
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
        self, make_manager: ManagerFactory, store: RunRegistry, state: str
    ) -> None:
        manager = make_manager(max_concurrency=1)
        outcome = Outcome(manager, store)
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
        self, make_manager: ManagerFactory, store: RunRegistry
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, store)
        gate = Gate(swallow_cancel=True)
        run = await manager.submit(gate.body)
        await wait_event(gate.started)
        async with asyncio.timeout(SAFETY):
            results = await asyncio.gather(*(manager.cancel_task(run.run_id) for _ in range(10)))
        assert results.count(True) == 1
        assert (await outcome.final(run.run_id)).status is RunStatus.CANCELLED
        await outcome.check_counts()

    async def test_cancelling_every_waiting_run_while_saturated_returns_at_once(
        self, make_manager: ManagerFactory, store: RunRegistry
    ) -> None:
        manager = make_manager(max_concurrency=2)
        outcome = Outcome(manager, store)
        blockers = [Gate(), Gate()]
        for gate in blockers:
            await manager.submit(gate.body, name="blocker")
        for gate in blockers:
            await wait_event(gate.started)
        waiting = [Gate() for _ in range(10)]
        runs = [await manager.submit(gate.body, name="waiting") for gate in waiting]

        # The blockers never give up their slots while the cancels run: a cancel that waited
        # for a slot would wait for ever, so the bound only turns that hang into a failure.
        async with asyncio.timeout(SAFETY):
            results = await asyncio.gather(*(manager.cancel_task(r.run_id) for r in runs))
        assert results == [True] * len(runs)
        assert not any(g.cancelled.is_set() for g in blockers)
        assert (manager.stats().running, manager.stats().queued) == (2, 0)
        for run in runs:
            assert (await store.get_run(run.run_id)) is not None
            assert (await outcome.final(run.run_id)).status is RunStatus.CANCELLED
        for gate in blockers:
            gate.open()
        await outcome.check_counts()
        assert all(gate.starts == 0 for gate in waiting)

    async def test_cancel_a_waiting_run_as_its_slot_frees(
        self, make_manager: ManagerFactory, store: RunRegistry, yields: int
    ) -> None:
        manager = make_manager(max_concurrency=1)
        outcome = Outcome(manager, store)
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


# -- a run that ignores cancellation -------------------------------------------------------


class Stubborn:
    """A run body that keeps running through every cancellation until the test releases it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancels = 0
        self.cancelled = asyncio.Event()
        self._release: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def release(self, result: str = "too late") -> None:
        self._release.set_result(result)

    async def body(self) -> str:
        self.started.set()
        while True:
            try:
                return await asyncio.shield(self._release)
            except asyncio.CancelledError:
                self.cancels += 1
                self.cancelled.set()


class TestCancelTimeout:
    """cancel_task gives a run's code ``cancel_timeout`` seconds to stop, then returns."""

    async def test_a_run_that_ignores_cancellation(
        self, make_manager: ManagerFactory, store: RunRegistry
    ) -> None:
        cancel_timeout = 0.2
        stubborn = Stubborn()
        with capture_logs() as logs:
            manager = make_manager(cancel_timeout=cancel_timeout)
            outcome = Outcome(manager, store)
            run = await manager.submit(stubborn.body, name="stubborn")
            await wait_event(stubborn.started)

            loop = asyncio.get_running_loop()
            began = loop.time()
            async with asyncio.timeout(SAFETY):
                assert await manager.cancel_task(run.run_id) is True
            waited = loop.time() - began

            # It waited for the code to stop, gave up after cancel_timeout, and said so.
            assert waited >= cancel_timeout
            assert stubborn.cancelled.is_set()
            recorded = await store.get_run(run.run_id)
            assert recorded is not None
            assert recorded.status is RunStatus.CANCELLED
            assert recorded.finished_at is not None
            ignored = [e for e in logs if e["event"] == "run_ignores_cancellation"]
            assert len(ignored) == 1, ignored
            assert ignored[0]["log_level"] == "error"
            assert (ignored[0]["run_id"], ignored[0]["waited"]) == (run.run_id, cancel_timeout)
            # The code is still running, and the manager still counts it as active.
            assert manager.is_task_active(run.run_id)

            # A second cancel reports the run already cancelled, after the same bounded wait.
            async with asyncio.timeout(SAFETY):
                assert await manager.cancel_task(run.run_id) is False

            # When the code finally returns, its result is discarded: CANCELLED stays.
            stubborn.release("too late")
            finished = await outcome.final(run.run_id)
        assert (finished.status, finished.result) == (RunStatus.CANCELLED, None)
        assert not manager.is_task_active(run.run_id)
        await outcome.check_counts()


# -- timeouts against completion -----------------------------------------------------------


class TestTimeoutVersusCompletion:
    """A run's timeout and its completion land in the same instant; one of them wins."""

    async def test_timeout_vs_completion(
        self, make_manager: ManagerFactory, store: RunRegistry, offset: float
    ) -> None:
        timeout = 0.02
        manager = make_manager()
        outcome = Outcome(manager, store)
        gate = Gate()
        run = await manager.submit(gate.body, timeout=timeout)
        await wait_event(gate.started)
        assert gate.started_at is not None
        # The timeout was armed in the step that started the body: completion is scheduled
        # on the same clock around that deadline, not around this (later, under load) line.
        asyncio.get_running_loop().call_at(gate.started_at + timeout + offset, gate.open, "in time")

        finished = await outcome.final(run.run_id)
        if finished.status is RunStatus.COMPLETED:
            assert finished.result == "in time"
        else:
            assert (finished.status, finished.error_type) == (RunStatus.FAILED, "TimeoutError")
        await outcome.check_counts()

    async def test_cancel_vs_timeout(
        self, make_manager: ManagerFactory, store: RunRegistry, offset: float
    ) -> None:
        timeout = 0.02
        manager = make_manager()
        outcome = Outcome(manager, store)
        gate = Gate()
        run = await manager.submit(gate.body, timeout=timeout)
        await wait_event(gate.started)
        loop = asyncio.get_running_loop()
        cancelling: asyncio.Future[bool] = loop.create_future()

        def cancel_now() -> None:
            task = asyncio.create_task(manager.cancel_task(run.run_id))
            task.add_done_callback(lambda t: cancelling.set_result(t.result()))

        assert gate.started_at is not None
        loop.call_at(gate.started_at + timeout + offset, cancel_now)
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
    @pytest.mark.parametrize("grace", [0.0, SAFETY])
    async def test_shutdown_vs_submit(
        self,
        make_manager: ManagerFactory,
        store: RunRegistry,
        first: str,
        yields: int,
        grace: float,
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, store)
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
            recorded = await store.get_run(submitted.run_id)
            assert recorded is not None
            assert recorded.status in {RunStatus.COMPLETED, RunStatus.CANCELLED}
            terminal = [e for e in outcome.events if e.run_id == submitted.run_id]
            assert [e.status for e in terminal if e.status.is_terminal] == [recorded.status]
        else:
            assert isinstance(submitted, ManagerClosedError), submitted
        assert not await store.list_runs(status=ACTIVE)
        assert manager.get_active_task_count() == 0
        assert manager.stats().counts == await store.count_runs()


class TestShutdownVersusCancel:
    """Shutdown races a cancel_task, or a run's own completion; the run ends once."""

    async def test_shutdown_vs_cancel(
        self, make_manager: ManagerFactory, store: RunRegistry, yields: int
    ) -> None:
        manager = make_manager(max_concurrency=1)
        outcome = Outcome(manager, store)
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
        assert manager.stats().counts == await store.count_runs()

    async def test_shutdown_vs_completion(
        self, make_manager: ManagerFactory, store: RunRegistry, yields: int
    ) -> None:
        manager = make_manager()
        outcome = Outcome(manager, store)
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
        assert manager.stats().counts == await store.count_runs()


class TestShutdownVersusAQueuedWrite:
    """Shutdown while a submit's QUEUED write is still in flight (memory registry only)."""

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


# -- the same id submitted twice at once -----------------------------------------------------


class TestDuplicateSubmits:
    """Two submits of one run id at once: exactly one is accepted."""

    @pytest.mark.parametrize("count", [2, 5])
    async def test_concurrent_submits_of_one_id(
        self, make_manager: ManagerFactory, store: RunRegistry, count: int
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
        assert sum((await store.count_runs()).values()) == 1
        assert await manager.cancel_task("only-once") is False

    @pytest.mark.parametrize("count", [2, 5])
    async def test_concurrent_submits_across_managers(
        self, make_manager: ManagerFactory, store: RunRegistry, count: int
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
        assert sum((await store.count_runs()).values()) == 1


async def _noop() -> None:
    return None
