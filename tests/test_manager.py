"""Behaviour of `BackgroundTaskManager`, as DESIGN.md and issue 2 describe it.

Runs here are bodies the test controls (`Gate`): they report that they started and then
wait until the test releases them, so no test synchronises on ``sleep``. The few timeouts
are safety bounds that turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

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
    ManagerInfo,
    NoActiveRunError,
    QueueFullError,
    Retry,
    Run,
    RunEvent,
    RunHandle,
    RunNotFoundError,
    RunRegistry,
    RunStatus,
    current_run,
    report_progress,
)
from runtrack.registry.base import ManagerPresence

DEBUG_ON, DEBUG_OFF = "debug-on", "debug-off"


class _FormattingHandler(logging.Handler):
    """Formats each record (message and traceback) as a real handler would, then drops it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test with runtrack's debug logging on and off (`TestLogging`: on only)."""
    if "logging_mode" in metafunc.fixturenames:
        on_only = metafunc.cls is not None and metafunc.cls.__name__ == "TestLogging"
        modes = [DEBUG_ON] if on_only else [DEBUG_ON, DEBUG_OFF]
        metafunc.parametrize("logging_mode", modes, indirect=True)


@pytest.fixture(autouse=True)
def logging_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Logging as an application leaves it, before any manager of the test is built.

    debug-off: nothing configured (structlog reset, the ``runtrack`` logger at WARNING, as
    under stdlib's defaults): managers skip their debug events and take the completion fast
    path. debug-on: the ``runtrack`` logger at DEBUG with a handler that formats every
    record, so each event is built, routed and rendered.
    """
    mode: str = request.param
    logger = logging.getLogger("runtrack")
    saved = (logger.level, logger.handlers[:], logger.propagate)
    structlog.reset_defaults()
    if mode == DEBUG_ON:
        logger.setLevel(logging.DEBUG)
        logger.handlers = [_FormattingHandler()]
        logger.propagate = False
    else:
        logger.setLevel(logging.WARNING)
    try:
        yield mode
    finally:
        logger.level, logger.handlers, logger.propagate = saved
        structlog.reset_defaults()


@pytest.fixture
async def make_manager(
    runtrack_registry: InMemoryRunRegistry,
) -> AsyncIterator[ManagerFactory]:
    """Build managers (on the test's registry unless told otherwise); all shut down after."""
    made: list[BackgroundTaskManager] = []

    def make(registry: RunRegistry | None = None, **options: Any) -> BackgroundTaskManager:
        options.setdefault("heartbeat_interval", 0.05)
        manager = BackgroundTaskManager(
            registry if registry is not None else runtrack_registry, **options
        )
        made.append(manager)
        return manager

    yield make
    leaked: list[str] = []
    for manager in made:
        leaked += await shut_down(manager)
        assert not await manager.registry.list_runs(status=ACTIVE), "a run was left active"
    if leaked:
        pytest.fail(f"make_manager: runs still active after the test: {leaked}")


async def status_of(registry: RunRegistry, run_id: str) -> RunStatus:
    run = await registry.get_run(run_id)
    assert run is not None, f"{run_id} is not in the registry"
    return run.status


async def _named_work() -> str:
    return "named"


async def _add(a: int, b: int = 0) -> int:
    return a + b


async def _boom(message: str = "boom") -> None:
    raise ValueError(message)


# -- start_task ---------------------------------------------------------------------------


class TestStartTask:
    """start_task is synchronous, records the run QUEUED, and executes it."""

    async def test_returns_the_run_id_at_once_and_records_it_queued(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        gate = Gate()
        run = Run(name="gated")
        run_id = task_manager.start_task(run, gate.body())
        assert run_id == run.run_id
        assert not gate.started.is_set()
        assert await status_of(runtrack_registry, run_id) is RunStatus.QUEUED
        assert task_manager.is_task_active(run_id)

        await wait_event(gate.started)
        assert await status_of(runtrack_registry, run_id) is RunStatus.RUNNING
        gate.open({"rows": 3})
        finished = await task_manager.wait(run_id, timeout=SAFETY)
        assert finished.status is RunStatus.COMPLETED
        assert finished.result == {"rows": 3}
        assert finished.started_at is not None
        assert finished.finished_at is not None
        assert finished.owner == task_manager.owner
        assert not task_manager.is_task_active(run_id)

    async def test_name_defaults_to_the_coroutine_functions_qualified_name(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        run_id = task_manager.start_task(Run(), _named_work())
        finished = await task_manager.wait(run_id, timeout=SAFETY)
        assert finished.name == "_named_work"
        assert finished.result == "named"

    async def test_records_the_runs_fields(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        run = Run(
            name="report",
            parameters={"user": 42},
            tags={"team": "billing"},
            group="reports",
            priority=7,
        )
        task_manager.start_task(run, _named_work())
        recorded = await runtrack_registry.get_run(run.run_id)
        assert recorded is not None
        assert (recorded.name, recorded.parameters, recorded.tags) == (
            "report",
            {"user": 42},
            {"team": "billing"},
        )
        assert (recorded.group, recorded.priority) == ("reports", 7)
        await task_manager.wait(run.run_id, timeout=SAFETY)

    @pytest.mark.parametrize("not_awaitable", [42, None, _named_work], ids=repr)
    async def test_not_awaitable_is_a_type_error_and_records_nothing(
        self,
        task_manager: BackgroundTaskManager,
        runtrack_registry: InMemoryRunRegistry,
        not_awaitable: object,
    ) -> None:
        with pytest.raises(TypeError):
            task_manager.start_task(Run(name="bad"), not_awaitable)  # type: ignore[arg-type]
        assert sum((await runtrack_registry.count_runs()).values()) == 0
        assert task_manager.get_active_task_count() == 0

    async def test_an_active_id_is_a_duplicate_and_the_coroutine_is_closed(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        gate = Gate()
        run = Run(name="first")
        task_manager.start_task(run, gate.body())
        second = _named_work()
        with pytest.raises(DuplicateRunError):
            task_manager.start_task(Run(run_id=run.run_id, name="second"), second)
        assert inspect.getcoroutinestate(second) == inspect.CORO_CLOSED
        gate.open()
        assert (await task_manager.wait(run.run_id, timeout=SAFETY)).name == "first"

    async def test_a_run_already_finished_in_the_registry_is_not_executed(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        # Cancelled through the API before any worker picked it up.
        run = Run(name="too_late")
        await runtrack_registry.add_run(run)
        await runtrack_registry.transition(run.run_id, RunStatus.CANCELLED)
        gate = Gate()
        body = gate.body()
        with pytest.raises(DuplicateRunError):
            task_manager.start_task(run, body)
        assert inspect.getcoroutinestate(body) == inspect.CORO_CLOSED
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert finished.status is RunStatus.CANCELLED
        assert gate.starts == 0
        assert not task_manager.is_task_active(run.run_id)

    async def test_a_run_already_in_the_registry_is_executed_not_recorded_again(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        run = Run(name="from_api", parameters={"source": "api"})
        await runtrack_registry.add_run(run)
        task_manager.start_task(run, _named_work())
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert finished.status is RunStatus.COMPLETED
        assert finished.parameters == {"source": "api"}
        assert sum((await runtrack_registry.count_runs()).values()) == 1

    async def test_the_manager_holds_strong_references_to_its_tasks(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        # The body awaits a future that nothing but its own frame references: if the
        # manager did not keep the task alive, gc.collect() would reclaim the whole cycle.
        refs: list[weakref.ref[asyncio.Future[str]]] = []
        ready = asyncio.Event()

        async def orphan() -> str:
            fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            refs.append(weakref.ref(fut))
            ready.set()
            return await fut

        run_id = task_manager.start_task(Run(name="orphan"), orphan())
        await wait_event(ready)
        gc.collect()
        fut = refs[0]()
        assert fut is not None, "the running task was garbage-collected"
        fut.set_result("survived")
        del fut
        assert (await task_manager.wait(run_id, timeout=SAFETY)).result == "survived"


# -- submit -------------------------------------------------------------------------------


class TestSubmit:
    """submit writes the QUEUED record before returning and accepts callables."""

    async def test_the_queued_record_exists_when_submit_returns(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        gate = Gate()
        run = await task_manager.submit(gate.body, name="gated")
        assert run.status is RunStatus.QUEUED
        assert run.owner == task_manager.owner
        assert await runtrack_registry.get_run(run.run_id) is not None
        gate.open()
        assert (await task_manager.wait(run.run_id, timeout=SAFETY)).result == "done"

    async def test_the_queued_record_exists_when_submit_returns_through_a_queued_writer(
        self, make_manager: ManagerFactory
    ) -> None:
        registry = DelegatingRegistry()
        manager = make_manager(registry)
        gate = Gate()
        run = await manager.submit(gate.body, name="gated")
        # Read the inner registry directly: no flush of the manager's writer is involved.
        recorded = await registry.inner.get_run(run.run_id)
        assert recorded is not None
        assert recorded.name == "gated"
        gate.open()
        assert (await manager.wait(run.run_id, timeout=SAFETY)).status is RunStatus.COMPLETED

    async def test_passes_arguments_and_records_metadata(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        run = await task_manager.submit(
            _add,
            1,
            b=2,
            name="adder",
            parameters={"a": 1, "b": 2},
            tags={"team": "math"},
            group="sums",
            priority=5,
        )
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert finished.result == 3
        assert finished.name == "adder"
        assert finished.parameters == {"a": 1, "b": 2}
        assert finished.tags == {"team": "math"}
        assert (finished.group, finished.priority) == ("sums", 5)

    async def test_name_defaults_to_the_callables_qualified_name(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        run = await task_manager.submit(_add, 2)
        assert run.name == "_add"
        await task_manager.wait(run.run_id, timeout=SAFETY)

    async def test_a_coroutine_object_is_accepted(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        run = await task_manager.submit(_add(4, 5), run_id="explicit-id")
        assert run.run_id == "explicit-id"
        assert (await task_manager.wait("explicit-id", timeout=SAFETY)).result == 9

    async def test_a_sync_callable_runs_in_a_worker_thread(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        loop_thread = threading.get_ident()

        def plain(x: int) -> list[int]:
            return [x, int(threading.get_ident() != loop_thread)]

        run = await task_manager.submit(plain, 7)
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert (finished.status, finished.result) == (RunStatus.COMPLETED, [7, 1])

    async def test_retry_with_a_coroutine_object_is_a_type_error(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        coro = _add(1)
        with pytest.raises(TypeError):
            await task_manager.submit(coro, retry=Retry(attempts=2))
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED

    async def test_an_id_already_in_the_registry_is_a_duplicate(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        await runtrack_registry.add_run(Run(run_id="taken", name="old"))
        await runtrack_registry.transition("taken", RunStatus.RUNNING)
        await runtrack_registry.transition("taken", RunStatus.COMPLETED)
        with pytest.raises(DuplicateRunError):
            await task_manager.submit(_add, 1, run_id="taken")
        assert (await status_of(runtrack_registry, "taken")) is RunStatus.COMPLETED

    async def test_delay_starts_the_run_later(self, task_manager: BackgroundTaskManager) -> None:
        started_at: list[float] = []

        async def record_start() -> None:
            started_at.append(time.monotonic())

        before = time.monotonic()
        run = await task_manager.submit(record_start, delay=0.05)
        await let_loop_run()
        assert not started_at
        assert task_manager.stats().queued == 1
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert finished.status is RunStatus.COMPLETED
        assert started_at[0] - before >= 0.045


# -- admission ----------------------------------------------------------------------------


class TestAdmission:
    """Limits, groups, priorities and the pending queue decide which runs execute."""

    async def test_max_concurrency_caps_running_runs(self, make_manager: ManagerFactory) -> None:
        manager = make_manager(max_concurrency=2)
        gates = [Gate(str(i)) for i in range(5)]
        for gate in gates:
            manager.start_task(Run(name="capped"), gate.body())
        await wait_event(gates[0].started)
        await wait_event(gates[1].started)
        await let_loop_run()
        assert [g.started.is_set() for g in gates] == [True, True, False, False, False]
        stats = manager.stats()
        assert (stats.running, stats.queued, stats.max_concurrency) == (2, 3, 2)

        gates[0].open()
        await wait_event(gates[2].started)
        await let_loop_run()
        assert not gates[3].started.is_set()
        for gate in gates[1:]:
            gate.open()
        await manager.wait_all(timeout=SAFETY)
        assert all(g.starts == 1 for g in gates)

    async def test_waiting_runs_cost_no_task(self, make_manager: ManagerFactory) -> None:
        manager = make_manager(max_concurrency=1)
        blocker = Gate()
        manager.start_task(Run(name="blocker"), blocker.body())
        await wait_event(blocker.started)
        before = len(asyncio.all_tasks())
        waiting = [Gate() for _ in range(50)]
        for gate in waiting:
            manager.start_task(Run(name="waiting"), gate.body())
        await let_loop_run()
        assert len(asyncio.all_tasks()) - before < 5
        assert manager.stats().queued == 50
        blocker.open()
        for gate in waiting:
            gate.open()
        await manager.wait_all(timeout=SAFETY)

    async def test_a_group_limit_caps_only_its_group(self, make_manager: ManagerFactory) -> None:
        manager = make_manager(group_limits={"exports": 1})
        first, second, other = Gate("e1"), Gate("e2"), Gate("other")
        manager.start_task(Run(name="export", group="exports"), first.body())
        manager.start_task(Run(name="export", group="exports"), second.body())
        manager.start_task(Run(name="other"), other.body())
        await wait_event(first.started)
        await wait_event(other.started)
        await let_loop_run()
        assert not second.started.is_set()
        stats = manager.stats()
        assert stats.running_by_group == {"exports": 1}
        assert stats.group_limits == {"exports": 1}
        assert (stats.running, stats.queued) == (2, 1)

        first.open()
        await wait_event(second.started)
        second.open()
        other.open()
        await manager.wait_all(timeout=SAFETY)

    async def test_group_and_global_limits_combine(self, make_manager: ManagerFactory) -> None:
        manager = make_manager(max_concurrency=2, group_limits={"g": 1})
        g1, g2, free = Gate(), Gate(), Gate()
        manager.start_task(Run(name="g", group="g"), g1.body())
        manager.start_task(Run(name="g", group="g"), g2.body())
        manager.start_task(Run(name="free"), free.body())
        # g2 may not run (group full), so the free run takes the second global slot.
        await wait_event(g1.started)
        await wait_event(free.started)
        assert not g2.started.is_set()
        g1.open()
        await wait_event(g2.started)
        g2.open()
        free.open()
        await manager.wait_all(timeout=SAFETY)

    async def test_higher_priority_runs_first_and_fifo_within_a_priority(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=1)
        blocker = Gate()
        await manager.submit(blocker.body, name="blocker")
        await wait_event(blocker.started)
        order: list[str] = []

        async def record(label: str) -> None:
            order.append(label)

        for label, priority in [
            ("low", 0),
            ("high-1", 10),
            ("mid", 5),
            ("high-2", 10),
            ("negative", -1),
            ("low-2", 0),
        ]:
            await manager.submit(record, label, name=label, priority=priority)
        manager.start_task(Run(name="mid-2", priority=5), record("mid-2"))
        blocker.open()
        await manager.wait_all(timeout=SAFETY)
        assert order == ["high-1", "high-2", "mid", "mid-2", "low", "low-2", "negative"]

    async def test_priority_order_spans_groups(self, make_manager: ManagerFactory) -> None:
        manager = make_manager(max_concurrency=1, group_limits={"a": 5})
        blocker = Gate()
        await manager.submit(blocker.body, name="blocker")
        await wait_event(blocker.started)
        order: list[str] = []

        async def record(label: str) -> None:
            order.append(label)

        for label, group, priority in [
            ("a-low", "a", 0),
            ("none-mid", None, 5),
            ("b-high", "b", 9),
            ("a-high", "a", 9),
            ("b-low", "b", 0),
        ]:
            await manager.submit(record, label, group=group, priority=priority)
        blocker.open()
        await manager.wait_all(timeout=SAFETY)
        assert order == ["b-high", "a-high", "none-mid", "a-low", "b-low"]

    async def test_max_pending_counts_waiting_runs_not_running_ones(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        manager = make_manager(max_concurrency=1, max_pending=2)
        running = Gate()
        manager.start_task(Run(name="running"), running.body())
        await wait_event(running.started)
        waiting = [Gate(), Gate()]
        for gate in waiting:
            manager.start_task(Run(name="waiting"), gate.body())

        refused = _named_work()
        with pytest.raises(QueueFullError):
            manager.start_task(Run(run_id="refused", name="refused"), refused)
        assert inspect.getcoroutinestate(refused) == inspect.CORO_CLOSED
        with pytest.raises(QueueFullError):
            await manager.submit(_add, 1, run_id="refused-too")
        assert await runtrack_registry.get_run("refused") is None
        assert await runtrack_registry.get_run("refused-too") is None
        assert manager.get_active_task_count() == 3

        # Once a waiting run is admitted, there is room again.
        running.open()
        await wait_event(waiting[0].started)
        await manager.submit(_add, 1, name="accepted")
        for gate in waiting:
            gate.open()
        await manager.wait_all(timeout=SAFETY)

    async def test_max_pending_counts_free_slots_in_a_burst_of_start_task(
        self, make_manager: ManagerFactory
    ) -> None:
        # Two slots are free: of three runs started at once, only one waits for admission,
        # so max_pending=1 accepts all three and refuses the fourth.
        manager = make_manager(max_concurrency=2, max_pending=1)
        gates = [Gate() for _ in range(3)]
        try:
            for gate in gates:
                manager.start_task(Run(name="burst"), gate.body())
            with pytest.raises(QueueFullError):
                manager.start_task(Run(name="burst"), _named_work())
        finally:
            for gate in gates:
                gate.open()
        await manager.wait_all(timeout=SAFETY)

    async def test_max_pending_zero_refuses_any_waiting_run(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=1, max_pending=0)
        gate = Gate()
        await manager.submit(gate.body, name="only")
        await wait_event(gate.started)
        with pytest.raises(QueueFullError):
            await manager.submit(_add, 1)
        gate.open()
        await manager.wait_all(timeout=SAFETY)

    async def test_unbounded_concurrency_never_refuses(self, make_manager: ManagerFactory) -> None:
        manager = make_manager(max_pending=0)
        gates = [Gate() for _ in range(20)]
        for gate in gates:
            manager.start_task(Run(name="many"), gate.body())
        for gate in gates:
            await wait_event(gate.started)
            gate.open()
        await manager.wait_all(timeout=SAFETY)

    async def test_raising_the_limit_live_admits_waiting_runs(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=1)
        gates = [Gate() for _ in range(3)]
        for gate in gates:
            manager.start_task(Run(name="resize"), gate.body())
        await wait_event(gates[0].started)
        await let_loop_run()
        assert not gates[1].started.is_set()

        manager.set_max_concurrency(3)
        assert manager.max_concurrency == 3
        await wait_event(gates[1].started)
        await wait_event(gates[2].started)
        assert manager.stats().running == 3
        for gate in gates:
            gate.open()
        await manager.wait_all(timeout=SAFETY)

    async def test_lowering_the_limit_live_lets_running_runs_finish(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=3)
        gates = [Gate(str(i)) for i in range(5)]
        for gate in gates:
            manager.start_task(Run(name="resize"), gate.body())
        for gate in gates[:3]:
            await wait_event(gate.started)

        manager.set_max_concurrency(1)
        assert not any(g.cancelled.is_set() for g in gates[:3])
        gates[0].open()
        gates[1].open()
        await let_loop_run()
        assert manager.stats().running == 1
        assert not gates[3].started.is_set()

        gates[2].open()
        await wait_event(gates[3].started)
        await let_loop_run()
        assert not gates[4].started.is_set()
        gates[3].open()
        gates[4].open()
        await manager.wait_all(timeout=SAFETY)

    async def test_unbounding_the_limit_live_admits_everything(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=1)
        gates = [Gate() for _ in range(4)]
        for gate in gates:
            manager.start_task(Run(name="resize"), gate.body())
        await wait_event(gates[0].started)
        manager.set_max_concurrency(None)
        for gate in gates:
            await wait_event(gate.started)
        assert manager.stats().max_concurrency is None
        for gate in gates:
            gate.open()
        await manager.wait_all(timeout=SAFETY)

    @pytest.mark.parametrize(
        "options",
        [
            {"max_concurrency": 0},
            {"max_pending": -1},
            {"group_limits": {"g": 0}},
            {"default_timeout": 0},
            {"shutdown_grace": -1.0},
        ],
        ids=["max_concurrency", "max_pending", "group_limits", "default_timeout", "grace"],
    )
    def test_invalid_options_are_value_errors(self, options: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match=next(iter(options))):
            BackgroundTaskManager(**options)

    async def test_set_max_concurrency_rejects_non_positive_limits(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        with pytest.raises(ValueError, match="max_concurrency"):
            task_manager.set_max_concurrency(0)
        assert task_manager.max_concurrency is None


# -- timeouts -----------------------------------------------------------------------------


class TestTimeouts:
    """A run that outlives its timeout ends FAILED with TimeoutError."""

    async def test_a_run_timeout_fails_the_run(self, task_manager: BackgroundTaskManager) -> None:
        gate = Gate()
        run = await task_manager.submit(gate.body, name="slow", timeout=0.05)
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert finished.status is RunStatus.FAILED
        assert finished.error_type == "TimeoutError"
        assert finished.timeout == 0.05
        assert gate.cancelled.is_set()

    async def test_a_run_timeout_through_start_task(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        gate = Gate()
        run_id = task_manager.start_task(Run(name="slow", timeout=0.05), gate.body())
        finished = await task_manager.wait(run_id, timeout=SAFETY)
        assert (finished.status, finished.error_type) == (RunStatus.FAILED, "TimeoutError")

    async def test_the_default_timeout_applies_to_runs_without_one(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(default_timeout=0.05)
        gate = Gate()
        run = await manager.submit(gate.body, name="slow")
        finished = await manager.wait(run.run_id, timeout=SAFETY)
        assert (finished.status, finished.error_type) == (RunStatus.FAILED, "TimeoutError")

    async def test_a_run_timeout_overrides_the_default(self, make_manager: ManagerFactory) -> None:
        manager = make_manager(default_timeout=0.05)
        patient = Gate("patient")
        short = Gate("short")
        patient_run = await manager.submit(patient.body, name="patient", timeout=30)
        await wait_event(patient.started)
        short_run = await manager.submit(short.body, name="short")
        # The short run started after the patient one and has timed out on the default, so
        # the patient run has outlived the default timeout too.
        short_done = await manager.wait(short_run.run_id, timeout=SAFETY)
        assert short_done.error_type == "TimeoutError"
        assert await status_of(manager.registry, patient_run.run_id) is RunStatus.RUNNING
        patient.open("made it")
        finished = await manager.wait(patient_run.run_id, timeout=SAFETY)
        assert (finished.status, finished.result) == (RunStatus.COMPLETED, "made it")

    async def test_a_run_finishing_in_time_completes(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        run = await task_manager.submit(_add, 1, 1, timeout=30)
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert (finished.status, finished.result) == (RunStatus.COMPLETED, 2)


# -- cancellation -------------------------------------------------------------------------


class TestCancel:
    """cancel_task stops queued and running runs, here or in another manager."""

    async def test_a_queued_run_is_cancelled_without_ever_starting(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        manager = make_manager(max_concurrency=1)
        blocker, queued = Gate("blocker"), Gate("queued")
        manager.start_task(Run(name="blocker"), blocker.body())
        run_id = manager.start_task(Run(name="queued"), queued.body())
        await wait_event(blocker.started)

        assert await manager.cancel_task(run_id) is True
        record = await runtrack_registry.get_run(run_id)
        assert record is not None
        assert record.status is RunStatus.CANCELLED
        assert record.started_at is None
        assert record.finished_at is not None
        assert not manager.is_task_active(run_id)

        blocker.open()
        await manager.wait_all(timeout=SAFETY)
        assert queued.starts == 0

    async def test_a_running_run_gets_cancelled_error(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        gate = Gate()
        run = await task_manager.submit(gate.body, name="running")
        await wait_event(gate.started)
        assert await task_manager.cancel_task(run.run_id) is True
        assert gate.cancelled.is_set()
        assert await status_of(runtrack_registry, run.run_id) is RunStatus.CANCELLED
        assert (await task_manager.wait(run.run_id)).status is RunStatus.CANCELLED

    async def test_unknown_and_finished_runs_are_not_cancelled(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        assert await task_manager.cancel_task("no-such-run") is False
        run = await task_manager.submit(_add, 1)
        await task_manager.wait(run.run_id, timeout=SAFETY)
        assert await task_manager.cancel_task(run.run_id) is False
        assert await status_of(runtrack_registry, run.run_id) is RunStatus.COMPLETED

    async def test_cancelling_twice_returns_false_the_second_time(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        gate = Gate()
        run = await task_manager.submit(gate.body)
        await wait_event(gate.started)
        assert await task_manager.cancel_task(run.run_id) is True
        assert await task_manager.cancel_task(run.run_id) is False

    async def test_cancelling_a_waiting_run_needs_no_slot(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=1)
        blocker = Gate()
        manager.start_task(Run(name="blocker"), blocker.body())
        await wait_event(blocker.started)
        waiting = Gate()
        run = await manager.submit(waiting.body, name="waiting")
        async with asyncio.timeout(0.5):  # returns at once; the blocker never yields its slot
            assert await manager.cancel_task(run.run_id) is True
        assert blocker.started.is_set()
        assert not blocker.cancelled.is_set()
        assert manager.stats().running == 1
        blocker.open()
        await manager.wait_all(timeout=SAFETY)
        assert waiting.starts == 0

    async def test_a_coroutine_swallowing_cancellation_still_ends_cancelled(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        started = asyncio.Event()
        release: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def stubborn() -> str:
            started.set()
            try:
                await release
            except asyncio.CancelledError:
                return "ignored you"
            return "finished"

        run = await task_manager.submit(stubborn, name="stubborn")
        await wait_event(started)
        with capture_logs() as logs:
            assert await task_manager.cancel_task(run.run_id) is True
            finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert finished.status is RunStatus.CANCELLED
        assert finished.result is None
        assert await status_of(runtrack_registry, run.run_id) is RunStatus.CANCELLED
        misbehaving = [e for e in logs if e["event"] == "run_ignored_cancellation"]
        assert len(misbehaving) == 1
        assert misbehaving[0]["run_id"] == run.run_id
        assert misbehaving[0]["name"] == "stubborn"
        assert task_manager.stats().counts[RunStatus.CANCELLED] == 1
        assert task_manager.stats().counts[RunStatus.COMPLETED] == 0

    async def test_a_delayed_run_is_cancelled_before_it_starts(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        gate = Gate()
        run = await task_manager.submit(gate.body, delay=60)
        assert await task_manager.cancel_task(run.run_id) is True
        assert await status_of(runtrack_registry, run.run_id) is RunStatus.CANCELLED
        assert task_manager.stats().queued == 0
        assert gate.starts == 0

    async def test_a_run_waiting_for_its_retry_is_cancelled(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        failed_once = asyncio.Event()

        async def flaky() -> None:
            failed_once.set()
            raise ConnectionError("down")

        run = await task_manager.submit(flaky, retry=Retry(attempts=3, backoff=60))
        await wait_event(failed_once)
        await let_loop_run()
        record = await runtrack_registry.get_run(run.run_id)
        assert record is not None
        assert (record.status, record.attempt) == (RunStatus.QUEUED, 2)
        assert await task_manager.cancel_task(run.run_id) is True
        assert await status_of(runtrack_registry, run.run_id) is RunStatus.CANCELLED

    async def test_a_run_of_another_manager_sharing_the_registry(
        self,
        task_manager: BackgroundTaskManager,
        make_manager: ManagerFactory,
        runtrack_registry: InMemoryRunRegistry,
    ) -> None:
        other = make_manager()
        gate = Gate()
        run = await task_manager.submit(gate.body, name="owned_elsewhere")
        await wait_event(gate.started)

        assert await other.cancel_task(run.run_id) is True
        assert await status_of(runtrack_registry, run.run_id) is RunStatus.CANCELLED
        # The owner notices at its next heartbeat (every 0.05 s in the fixture).
        await wait_event(gate.cancelled)
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert finished.status is RunStatus.CANCELLED
        assert await other.cancel_task(run.run_id) is False

    async def test_a_queued_run_of_another_manager(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        owner, other = make_manager(max_concurrency=1), make_manager()
        blocker, queued = Gate(), Gate()
        owner.start_task(Run(name="blocker"), blocker.body())
        run_id = owner.start_task(Run(name="queued"), queued.body())
        await wait_event(blocker.started)
        assert await other.cancel_task(run_id) is True
        blocker.open()
        await owner.wait_all(timeout=SAFETY)
        assert queued.starts == 0
        assert await status_of(runtrack_registry, run_id) is RunStatus.CANCELLED


# -- retries ------------------------------------------------------------------------------


class TestRetries:
    """Retry re-runs failures after the backoff; the last failure ends FAILED."""

    async def test_a_failure_is_retried_until_it_succeeds(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        attempts: list[int] = []
        events: list[RunEvent] = []
        task_manager.add_listener(events.append)

        async def flaky() -> str:
            attempts.append(current_run().attempt)
            if len(attempts) < 3:
                raise ConnectionError(f"try {len(attempts)}")
            return "third time lucky"

        with capture_logs() as logs:
            run = await task_manager.submit(flaky, retry=Retry(attempts=3, backoff=0))
            finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert run.max_attempts == 3
        assert attempts == [1, 2, 3]
        assert finished.status is RunStatus.COMPLETED
        assert finished.attempt == 3
        assert finished.result == "third time lucky"
        assert finished.error_type is None

        mine = [(e.previous, e.status, e.attempt) for e in events if e.run_id == run.run_id]
        assert mine == [
            (None, RunStatus.QUEUED, 1),
            (RunStatus.QUEUED, RunStatus.RUNNING, 1),
            (RunStatus.RUNNING, RunStatus.QUEUED, 2),
            (RunStatus.QUEUED, RunStatus.RUNNING, 2),
            (RunStatus.RUNNING, RunStatus.QUEUED, 3),
            (RunStatus.QUEUED, RunStatus.RUNNING, 3),
            (RunStatus.RUNNING, RunStatus.COMPLETED, 3),
        ]
        retrying = [e for e in logs if e["event"] == "run_retrying"]
        assert len(retrying) == 2
        for entry in retrying:
            assert {"run_id", "name", "status", "attempt"} <= entry.keys()
            assert entry["run_id"] == run.run_id

    async def test_the_last_failure_ends_failed(self, task_manager: BackgroundTaskManager) -> None:
        calls = 0

        async def always_down() -> None:
            nonlocal calls
            calls += 1
            raise ConnectionError(f"down {calls}")

        run = await task_manager.submit(always_down, retry=Retry(attempts=3, backoff=0))
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert calls == 3
        assert finished.status is RunStatus.FAILED
        assert finished.attempt == 3
        assert (finished.error_type, finished.error_message) == ("ConnectionError", "down 3")

    async def test_only_the_listed_exceptions_are_retried(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        calls = 0

        async def wrong_kind() -> None:
            nonlocal calls
            calls += 1
            raise KeyError("not retryable")

        run = await task_manager.submit(
            wrong_kind, retry=Retry(attempts=5, backoff=0, on=(ConnectionError,))
        )
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert calls == 1
        assert (finished.status, finished.attempt, finished.error_type) == (
            RunStatus.FAILED,
            1,
            "KeyError",
        )

    async def test_the_run_waits_for_the_backoff_before_retrying(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        starts: list[float] = []

        async def flaky() -> None:
            starts.append(time.monotonic())
            if len(starts) == 1:
                raise ConnectionError("once")

        run = await task_manager.submit(flaky, retry=Retry(attempts=2, backoff=0.05))
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert finished.status is RunStatus.COMPLETED
        assert starts[1] - starts[0] >= 0.045

    async def test_a_timeout_is_retried_like_any_failure(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        calls = 0

        async def slow_first() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.Event().wait()
            return "fast enough"

        run = await task_manager.submit(
            slow_first, timeout=0.05, retry=Retry(attempts=2, backoff=0)
        )
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert (finished.status, finished.attempt, finished.result) == (
            RunStatus.COMPLETED,
            2,
            "fast enough",
        )


# -- waiting ------------------------------------------------------------------------------


class TestWaiting:
    """wait and wait_all return finished records; their timeouts cancel nothing."""

    async def test_wait_returns_the_terminal_record(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        run = await task_manager.submit(_boom, "bad input")
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert finished.is_finished
        assert (finished.status, finished.error_message) == (RunStatus.FAILED, "bad input")

    async def test_wait_for_an_unknown_run_raises(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        with pytest.raises(RunNotFoundError):
            await task_manager.wait("missing", timeout=SAFETY)

    async def test_a_wait_timeout_cancels_nothing(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        gate = Gate()
        run = await task_manager.submit(gate.body)
        await wait_event(gate.started)
        with pytest.raises(TimeoutError):
            await task_manager.wait(run.run_id, timeout=0.01)
        assert not gate.cancelled.is_set()
        assert task_manager.is_task_active(run.run_id)
        gate.open()
        assert (await task_manager.wait(run.run_id, timeout=SAFETY)).result == "done"

    async def test_wait_all_returns_when_nothing_is_active(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=2)
        gates = [Gate() for _ in range(4)]
        ids = [manager.start_task(Run(name="all"), gate.body()) for gate in gates]
        waiter = asyncio.create_task(manager.wait_all(timeout=SAFETY))
        await wait_event(gates[1].started)
        assert not waiter.done()
        for gate in gates:
            gate.open()
        await waiter
        assert manager.get_active_task_count() == 0
        for run_id in ids:
            assert await status_of(manager.registry, run_id) is RunStatus.COMPLETED

    async def test_a_wait_all_timeout_cancels_nothing(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        gate = Gate()
        run = await task_manager.submit(gate.body)
        await wait_event(gate.started)
        with pytest.raises(TimeoutError):
            await task_manager.wait_all(timeout=0.01)
        assert not gate.cancelled.is_set()
        assert task_manager.get_active_task_ids() == [run.run_id]
        gate.open()
        await task_manager.wait_all(timeout=SAFETY)

    async def test_wait_all_with_nothing_to_wait_for_returns(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        await task_manager.wait_all(timeout=SAFETY)

    async def test_wait_for_a_run_of_another_manager(
        self, task_manager: BackgroundTaskManager, make_manager: ManagerFactory
    ) -> None:
        other = make_manager()
        gate = Gate()
        run = await task_manager.submit(gate.body)
        waiter = asyncio.create_task(other.wait(run.run_id, timeout=SAFETY))
        await wait_event(gate.started)
        gate.open("seen elsewhere")
        finished = await waiter
        assert (finished.status, finished.result) == (RunStatus.COMPLETED, "seen elsewhere")


# -- shutdown -----------------------------------------------------------------------------


class TestShutdown:
    """shutdown drains within the grace, cancels the rest, and leaves nothing active."""

    async def test_runs_that_finish_within_the_grace_complete(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager()
        gate = Gate()
        run = await manager.submit(gate.body, name="draining")
        await wait_event(gate.started)
        with capture_logs() as logs:
            shutting = asyncio.create_task(manager.shutdown(grace=SAFETY))
            await let_loop_run()
            assert not shutting.done()
            gate.open("drained")
            await shutting
        finished = await manager.registry.get_run(run.run_id)
        assert finished is not None
        assert (finished.status, finished.result) == (RunStatus.COMPLETED, "drained")
        assert not any(e["event"] == "run_cancelled" for e in logs)

    async def test_runs_left_after_the_grace_are_cancelled(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        manager = make_manager(max_concurrency=1)
        running, queued = Gate("running"), Gate("queued")
        running_id = manager.start_task(Run(name="running"), running.body())
        queued_id = manager.start_task(Run(name="queued"), queued.body())
        delayed = await manager.submit(_add, 1, delay=60)
        await wait_event(running.started)

        await manager.shutdown(grace=0.01)
        assert running.cancelled.is_set()
        assert queued.starts == 0
        for run_id in (running_id, queued_id, delayed.run_id):
            assert await status_of(runtrack_registry, run_id) is RunStatus.CANCELLED
        assert not await runtrack_registry.list_runs(status=ACTIVE)
        assert manager.get_active_task_count() == 0
        assert manager.stats().state == "closed"

    async def test_it_logs_the_runs_it_waits_for(self, make_manager: ManagerFactory) -> None:
        manager = make_manager()
        gate = Gate()
        run = await manager.submit(gate.body, name="slowpoke")
        await wait_event(gate.started)
        with capture_logs() as logs:
            shutting = asyncio.create_task(manager.shutdown(grace=SAFETY))
            await let_loop_run()
            gate.open()
            await shutting
        waiting = [e for e in logs if e["event"] == "shutdown_waiting"]
        assert waiting, "shutdown did not log the runs it waited for"
        runs = waiting[0]["runs"]
        assert len(runs) == 1
        assert runs[0]["run_id"] == run.run_id
        assert runs[0]["name"] == "slowpoke"
        assert isinstance(runs[0]["running_for"], float)
        assert runs[0]["running_for"] >= 0

    async def test_a_registry_call_of_the_heartbeat_ends_before_shutdown_returns(
        self, registry: RunRegistry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Cancelling the heartbeat lets its registry call finish: shutdown waits for it.

        Left running after shutdown, the call would use the registry once it is closed: a
        Redis registry's client then opened a connection nobody closed.
        """
        assert isinstance(registry, ManagerPresence)
        sweep = registry.interrupt_dead_managers
        sweeping, release = asyncio.Event(), asyncio.Event()
        order: list[str] = []

        async def held_sweep(now: datetime, by: str) -> Any:
            sweeping.set()
            await release.wait()
            try:
                return await sweep(now, by)
            finally:
                order.append("sweep ended")

        monkeypatch.setattr(registry, "interrupt_dead_managers", held_sweep)
        manager = BackgroundTaskManager(registry)
        await manager.submit(_add, 1)  # the manager starts: its heartbeat registers, sweeps
        await wait_event(sweeping)
        shutting = asyncio.create_task(manager.shutdown())
        shutting.add_done_callback(lambda _: order.append("shutdown returned"))
        await let_loop_run()
        release.set()
        async with asyncio.timeout(SAFETY):
            await shutting
        assert order == ["sweep ended", "shutdown returned"]

    async def test_no_new_runs_after_shutdown(self, make_manager: ManagerFactory) -> None:
        manager = make_manager()
        await manager.shutdown()
        coro = _named_work()
        with pytest.raises(ManagerClosedError):
            manager.start_task(Run(name="late"), coro)
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        with pytest.raises(ManagerClosedError):
            await manager.submit(_add, 1)
        assert sum((await manager.registry.count_runs()).values()) == 0

    async def test_no_new_runs_while_shutting_down(self, make_manager: ManagerFactory) -> None:
        manager = make_manager()
        gate = Gate()
        await manager.submit(gate.body)
        await wait_event(gate.started)
        shutting = asyncio.create_task(manager.shutdown(grace=SAFETY))
        await let_loop_run()
        assert manager.stats().state == "closing"
        with pytest.raises(ManagerClosedError):
            await manager.submit(_add, 1)
        gate.open()
        await shutting

    async def test_shutdown_twice_and_concurrently_is_safe(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager()
        gate = Gate()
        await manager.submit(gate.body)
        await wait_event(gate.started)
        first = asyncio.create_task(manager.shutdown(grace=SAFETY))
        second = asyncio.create_task(manager.shutdown(grace=SAFETY))
        await let_loop_run()
        assert not second.done()
        gate.open()
        await asyncio.gather(first, second)
        await manager.shutdown()
        await manager.aclose()
        assert manager.stats().state == "closed"

    async def test_async_with_starts_and_shuts_down(
        self, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        async with BackgroundTaskManager(runtrack_registry, shutdown_grace=SAFETY) as manager:
            assert manager.stats().state == "running"
            assert "running" in repr(manager)
            run = await manager.submit(_add, 20, 22)
        assert manager.stats().state == "closed"
        assert "closed" in repr(manager)
        assert await status_of(runtrack_registry, run.run_id) is RunStatus.COMPLETED

    async def test_async_with_drains_gracefully(
        self, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        gate = Gate()
        async with BackgroundTaskManager(runtrack_registry, shutdown_grace=SAFETY) as manager:
            run = await manager.submit(gate.body)
            await wait_event(gate.started)
            asyncio.get_running_loop().call_soon(gate.open, "graceful")
        finished = await runtrack_registry.get_run(run.run_id)
        assert finished is not None
        assert (finished.status, finished.result) == (RunStatus.COMPLETED, "graceful")

    async def test_shutdown_flushes_the_queued_writer(self, make_manager: ManagerFactory) -> None:
        registry = DelegatingRegistry()
        manager = make_manager(registry, max_concurrency=3)
        gates = [Gate() for _ in range(6)]
        ids = [manager.start_task(Run(name="flush"), g.body()) for g in gates]
        for gate in gates:
            gate.open()
        await manager.shutdown(grace=SAFETY)
        # The inner registry is read directly: the manager has nothing left to flush.
        for run_id in ids:
            assert await status_of(registry.inner, run_id) is RunStatus.COMPLETED
        assert not await registry.inner.list_runs(status=ACTIVE)

    async def test_shutdown_cancels_through_the_queued_writer(
        self, make_manager: ManagerFactory
    ) -> None:
        registry = DelegatingRegistry()
        manager = make_manager(registry, max_concurrency=1)
        gates = [Gate() for _ in range(3)]
        ids = [manager.start_task(Run(name="cut"), g.body()) for g in gates]
        await wait_event(gates[0].started)
        await manager.shutdown(grace=0)
        for run_id in ids:
            assert await status_of(registry.inner, run_id) is RunStatus.CANCELLED

    async def test_repr_shows_state_and_counts(self, make_manager: ManagerFactory) -> None:
        manager = make_manager(max_concurrency=1)
        gates = [Gate() for _ in range(3)]
        for gate in gates:
            manager.start_task(Run(name="repr"), gate.body())
        await wait_event(gates[0].started)
        assert repr(manager) == "<BackgroundTaskManager running active=3 queued=2>"
        for gate in gates:
            gate.open()
        await manager.wait_all(timeout=SAFETY)


# -- heartbeats ---------------------------------------------------------------------------


class TestHeartbeat:
    """The manager's row in the registry: its heartbeat_at advances every heartbeat_interval."""

    async def test_the_managers_heartbeat_advances_while_a_run_executes(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        gate = Gate()
        run = await task_manager.submit(gate.body)
        await wait_event(gate.started)
        recorded = await runtrack_registry.get_run(run.run_id)
        assert recorded is not None
        assert recorded.heartbeat_at == recorded.started_at  # liveness is the manager's row

        async def mine() -> ManagerInfo | None:
            managers = await runtrack_registry.list_managers()
            return next((m for m in managers if m.owner == task_manager.owner), None)

        # Polls the registry: there is no event for a heartbeat. The fixture beats every
        # 0.05 s; SAFETY bounds the wait.
        async with asyncio.timeout(SAFETY):
            while True:
                first = await mine()
                if first is not None and first.running == 1:
                    break
                await asyncio.sleep(0.01)
            while True:
                current = await mine()
                assert current is not None
                if current.heartbeat_at > first.heartbeat_at:
                    break
                await asyncio.sleep(0.01)
        assert (current.started_at, current.max_concurrency) == (first.started_at, None)
        gate.open()
        await task_manager.wait(run.run_id, timeout=SAFETY)

    def test_heartbeat_interval_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="heartbeat_interval"):
            BackgroundTaskManager(heartbeat_interval=0)


# -- failures -----------------------------------------------------------------------------


class TestFailures:
    """Exceptions in runs are recorded and logged, never raised to the caller or the loop."""

    async def test_an_exception_fails_the_run_and_is_logged_with_its_traceback(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        loop = asyncio.get_running_loop()
        handled: list[dict[str, Any]] = []
        previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: handled.append(context))
        try:
            with capture_logs() as logs:
                run = await task_manager.submit(_boom, "kaput", name="boom")
                finished = await task_manager.wait(run.run_id, timeout=SAFETY)
                await let_loop_run()
        finally:
            loop.set_exception_handler(previous)
        assert finished.status is RunStatus.FAILED
        assert (finished.error_type, finished.error_message) == ("ValueError", "kaput")
        assert finished.finished_at is not None
        assert handled == []
        failed = [e for e in logs if e["event"] == "run_failed"]
        assert len(failed) == 1
        entry = failed[0]
        assert (entry["run_id"], entry["name"], entry["status"], entry["attempt"]) == (
            run.run_id,
            "boom",
            "failed",
            1,
        )
        assert entry["log_level"] == "error"
        error = entry["exc_info"]
        assert isinstance(error, ValueError)
        assert error.__traceback__ is not None

    async def test_a_failing_start_task_run_is_recorded(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        run_id = task_manager.start_task(Run(name="boom"), _boom("via start_task"))
        finished = await task_manager.wait(run_id, timeout=SAFETY)
        assert (finished.status, finished.error_message) == (RunStatus.FAILED, "via start_task")

    async def test_an_exception_without_a_message_still_has_one(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        async def bare() -> None:
            raise RuntimeError

        run = await task_manager.submit(bare)
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert finished.error_type == "RuntimeError"
        assert finished.error_message

    async def test_one_failure_does_not_disturb_other_runs(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=1)
        ids = []
        for i in range(6):
            if i % 2:
                ids.append((await manager.submit(_boom)).run_id)
            else:
                ids.append((await manager.submit(_add, i)).run_id)
        await manager.wait_all(timeout=SAFETY)
        statuses = [await status_of(manager.registry, run_id) for run_id in ids]
        assert statuses == [RunStatus.COMPLETED, RunStatus.FAILED] * 3

    @pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
    def test_keyboard_interrupt_and_system_exit_are_not_swallowed(
        self, exc_type: type[BaseException]
    ) -> None:
        registry = InMemoryRunRegistry()
        run = Run(name="interrupt")
        unhandled: list[dict[str, Any]] = []

        async def interrupt() -> None:
            raise exc_type

        async def main() -> None:
            manager = BackgroundTaskManager(registry, shutdown_grace=0)
            manager.start_task(run, interrupt())
            await manager.wait(run.run_id, timeout=SAFETY)

        with asyncio.Runner() as runner:
            # asyncio reports the task the exception escaped from whenever that task is
            # garbage-collected. This handler only records the report: the default one
            # formats a traceback inside whatever the collector interrupted, and on Python
            # 3.11 doing that inside pytest's own ast.parse() breaks every later parse.
            runner.get_loop().set_exception_handler(
                lambda _loop, context: unhandled.append(context)
            )
            with pytest.raises(exc_type):
                runner.run(main())
        gc.collect()
        recorded = asyncio.run(registry.get_run(run.run_id))
        assert recorded is not None
        assert recorded.status.is_terminal


# -- current_run and report_progress ------------------------------------------------------


class TestRunContext:
    """current_run and report_progress see the run executing in this context."""

    async def test_current_run_describes_the_run(self, task_manager: BackgroundTaskManager) -> None:
        seen: list[RunHandle] = []

        async def introspect(x: int) -> int:
            seen.append(current_run())
            return x

        run = await task_manager.submit(introspect, 1, name="intro", parameters={"x": 1})
        await task_manager.wait(run.run_id, timeout=SAFETY)
        handle = seen[0]
        assert (handle.run_id, handle.name, handle.attempt, handle.max_attempts) == (
            run.run_id,
            "intro",
            1,
            1,
        )
        assert handle.parameters == {"x": 1}
        assert handle.manager is task_manager

    async def test_concurrent_runs_each_see_their_own(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        both_in = asyncio.Barrier(2)

        async def whoami() -> str:
            before = current_run().run_id
            await both_in.wait()
            assert current_run().run_id == before
            return before

        first = await task_manager.submit(whoami)
        second = await task_manager.submit(whoami)
        assert (await task_manager.wait(first.run_id, timeout=SAFETY)).result == first.run_id
        assert (await task_manager.wait(second.run_id, timeout=SAFETY)).result == second.run_id

    async def test_outside_a_run_there_is_no_current_run(self) -> None:
        with pytest.raises(NoActiveRunError):
            current_run()
        with pytest.raises(NoActiveRunError):
            await report_progress(0.5)

    async def test_progress_is_recorded_while_the_run_executes(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        reported = asyncio.Event()
        gate = Gate()

        async def export() -> None:
            await report_progress(0.5, "half way")
            reported.set()
            await gate.body()
            await report_progress(1)

        run = await task_manager.submit(export)
        await wait_event(reported)
        midway = await runtrack_registry.get_run(run.run_id)
        assert midway is not None
        assert (midway.status, midway.progress, midway.progress_message) == (
            RunStatus.RUNNING,
            0.5,
            "half way",
        )
        gate.open()
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert (finished.progress, finished.progress_message) == (1.0, None)

    @pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
    async def test_progress_outside_zero_to_one_is_a_value_error(
        self, task_manager: BackgroundTaskManager, fraction: float
    ) -> None:
        errors: list[Exception] = []

        async def bad_progress() -> None:
            try:
                await report_progress(fraction)
            except ValueError as exc:
                errors.append(exc)

        run = await task_manager.submit(bad_progress)
        finished = await task_manager.wait(run.run_id, timeout=SAFETY)
        assert len(errors) == 1
        assert finished.status is RunStatus.COMPLETED
        assert finished.progress is None

    async def test_progress_goes_through_the_queued_writer(
        self, make_manager: ManagerFactory
    ) -> None:
        registry = DelegatingRegistry()
        manager = make_manager(registry)

        async def export() -> None:
            await current_run().report_progress(0.25, "a quarter")

        run = await manager.submit(export)
        finished = await manager.wait(run.run_id, timeout=SAFETY)
        assert (finished.progress, finished.progress_message) == (0.25, "a quarter")


# -- listeners ----------------------------------------------------------------------------


class TestListeners:
    """add_listener callbacks receive a RunEvent for every status change."""

    async def test_a_sync_listener_sees_every_transition(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        events: list[RunEvent] = []
        task_manager.add_listener(events.append)
        run = await task_manager.submit(_add, 1, name="listened", group="g")
        await task_manager.wait(run.run_id, timeout=SAFETY)
        assert [(e.previous, e.status) for e in events] == [
            (None, RunStatus.QUEUED),
            (RunStatus.QUEUED, RunStatus.RUNNING),
            (RunStatus.RUNNING, RunStatus.COMPLETED),
        ]
        assert all(e.run_id == run.run_id and e.name == "listened" for e in events)
        assert all(e.group == "g" and e.attempt == 1 for e in events)
        assert events[-1].duration is not None
        assert events[-1].as_dict()["status"] == "completed"

    async def test_start_task_runs_are_listened_to_as_well(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        events: list[RunEvent] = []
        task_manager.add_listener(events.append)
        run_id = task_manager.start_task(Run(name="started"), _named_work())
        await task_manager.wait(run_id, timeout=SAFETY)
        assert [e.status for e in events] == [
            RunStatus.QUEUED,
            RunStatus.RUNNING,
            RunStatus.COMPLETED,
        ]

    async def test_failures_and_cancellations_are_events(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=1)
        events: list[RunEvent] = []
        manager.add_listener(events.append)
        failing = await manager.submit(_boom, "oops")
        await manager.wait(failing.run_id, timeout=SAFETY)
        blocker, queued = Gate(), Gate()
        running_run = await manager.submit(blocker.body)
        queued_run = await manager.submit(queued.body)
        await wait_event(blocker.started)
        await manager.cancel_task(queued_run.run_id)
        await manager.cancel_task(running_run.run_id)

        def last(run_id: str) -> RunEvent:
            return [e for e in events if e.run_id == run_id][-1]

        failed = last(failing.run_id)
        assert (failed.status, failed.error_type, failed.error_message) == (
            RunStatus.FAILED,
            "ValueError",
            "oops",
        )
        assert (last(queued_run.run_id).previous, last(queued_run.run_id).status) == (
            RunStatus.QUEUED,
            RunStatus.CANCELLED,
        )
        assert (last(running_run.run_id).previous, last(running_run.run_id).status) == (
            RunStatus.RUNNING,
            RunStatus.CANCELLED,
        )

    async def test_an_async_listener_is_awaited(self, task_manager: BackgroundTaskManager) -> None:
        finished = asyncio.Event()
        statuses: list[RunStatus] = []

        async def listener(event: RunEvent) -> None:
            await asyncio.sleep(0)
            statuses.append(event.status)
            if event.status.is_terminal:
                finished.set()

        task_manager.add_listener(listener)
        run = await task_manager.submit(_add, 1)
        await task_manager.wait(run.run_id, timeout=SAFETY)
        await wait_event(finished)
        assert sorted(statuses) == sorted(
            [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.COMPLETED]
        )

    async def test_a_failing_listener_is_logged_not_raised(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        async_failed = asyncio.Event()

        def broken(event: RunEvent) -> None:
            raise RuntimeError("listener bug")

        async def broken_async(event: RunEvent) -> None:
            if event.status.is_terminal:
                async_failed.set()
            raise RuntimeError("async listener bug")

        good: list[RunEvent] = []
        task_manager.add_listener(broken)
        task_manager.add_listener(broken_async)
        task_manager.add_listener(good.append)
        with capture_logs() as logs:
            run = await task_manager.submit(_add, 1)
            finished = await task_manager.wait(run.run_id, timeout=SAFETY)
            await wait_event(async_failed)
            await let_loop_run()
        assert finished.status is RunStatus.COMPLETED
        assert len(good) == 3
        failures = [e for e in logs if e["event"] == "listener_failed"]
        assert len(failures) == 6  # three events, two broken listeners

    async def test_a_removed_listener_is_not_called(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        events: list[RunEvent] = []
        task_manager.add_listener(events.append)
        task_manager.remove_listener(events.append)
        run = await task_manager.submit(_add, 1)
        await task_manager.wait(run.run_id, timeout=SAFETY)
        assert events == []

    async def test_a_non_callable_listener_is_a_type_error(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        with pytest.raises(TypeError):
            task_manager.add_listener("not callable")  # type: ignore[arg-type]


# -- stats and introspection --------------------------------------------------------------


class TestStats:
    """stats() and the active-run queries describe what the manager holds and has done."""

    async def test_counts_limits_and_live_numbers(
        self, make_manager: ManagerFactory, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        manager = make_manager(max_concurrency=1, max_pending=10, group_limits={"g": 1})
        await manager.wait((await manager.submit(_add, 1)).run_id, timeout=SAFETY)
        await manager.wait((await manager.submit(_boom)).run_id, timeout=SAFETY)
        blocker, waiting = Gate(), Gate()
        running = await manager.submit(blocker.body, group="g")
        queued = await manager.submit(waiting.body)
        await wait_event(blocker.started)

        stats = manager.stats()
        assert stats.state == "running"
        assert stats.owner == manager.owner
        assert (stats.running, stats.queued) == (1, 1)
        assert (stats.max_concurrency, stats.max_pending) == (1, 10)
        assert stats.group_limits == {"g": 1}
        assert stats.running_by_group == {"g": 1}
        assert stats.counts == {
            RunStatus.QUEUED: 1,
            RunStatus.RUNNING: 1,
            RunStatus.COMPLETED: 1,
            RunStatus.FAILED: 1,
            RunStatus.CANCELLED: 0,
        }
        assert stats.counts == await runtrack_registry.count_runs()
        assert manager.get_active_task_count() == 2
        assert set(manager.get_active_task_ids()) == {running.run_id, queued.run_id}
        assert manager.is_task_active(queued.run_id)

        await manager.cancel_task(queued.run_id)
        blocker.open()
        await manager.wait_all(timeout=SAFETY)
        stats = manager.stats()
        assert (stats.running, stats.queued) == (0, 0)
        assert stats.running_by_group == {}
        assert stats.counts[RunStatus.CANCELLED] == 1
        assert stats.counts[RunStatus.COMPLETED] == 2
        assert stats.counts == await runtrack_registry.count_runs()

    async def test_per_name_success_rate_and_durations(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        async def sometimes(fail: bool) -> None:
            await asyncio.sleep(0.01)  # the work itself: gives the run a measurable duration
            if fail:
                raise ValueError("failed")

        for fail in (False, False, False, True):
            await task_manager.submit(sometimes, fail, name="sometimes")
        await task_manager.submit(_add, 1, name="always")
        await task_manager.wait_all(timeout=SAFETY)

        by_name = task_manager.stats().by_name
        assert set(by_name) == {"sometimes", "always"}
        sometimes_stats = by_name["sometimes"]
        assert (sometimes_stats.finished, sometimes_stats.completed, sometimes_stats.failed) == (
            4,
            3,
            1,
        )
        assert sometimes_stats.success_rate == pytest.approx(0.75)
        assert sometimes_stats.mean_duration is not None
        assert sometimes_stats.p95_duration is not None
        assert sometimes_stats.mean_duration >= 0.009
        assert sometimes_stats.p95_duration >= sometimes_stats.mean_duration
        assert by_name["always"].success_rate == 1.0

    async def test_a_run_cancelled_before_starting_has_no_duration(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=1)
        blocker, queued = Gate(), Gate()
        manager.start_task(Run(name="blocker"), blocker.body())
        run_id = manager.start_task(Run(name="never"), queued.body())
        await manager.cancel_task(run_id)
        never = manager.stats().by_name["never"]
        assert (never.cancelled, never.success_rate, never.mean_duration) == (1, None, None)
        blocker.open()
        await manager.wait_all(timeout=SAFETY)


# -- logging ------------------------------------------------------------------------------

TRANSITION_FIELDS = {"run_id", "name", "status", "attempt"}


def events_of(logs: Sequence[Mapping[str, Any]], run_id: str) -> list[Mapping[str, Any]]:
    return [e for e in logs if e.get("run_id") == run_id]


class TestLogging:
    """Every transition is one structlog event with run_id, name, status and attempt."""

    async def test_a_start_task_run_logs_queued_started_completed(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        with capture_logs() as logs:
            run_id = task_manager.start_task(Run(name="logged"), _named_work())
            await task_manager.wait(run_id, timeout=SAFETY)
        mine = events_of(logs, run_id)
        assert [e["event"] for e in mine] == ["run_queued", "run_started", "run_completed"]
        for entry, status in zip(mine, ["queued", "running", "completed"], strict=True):
            assert entry.keys() >= TRANSITION_FIELDS, entry
            assert (entry["name"], entry["status"], entry["attempt"]) == ("logged", status, 1)
        assert mine[-1]["duration"] >= 0

    async def test_a_submitted_run_logs_queued_started_completed(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        with capture_logs() as logs:
            run = await task_manager.submit(_add, 1, name="logged")
            await task_manager.wait(run.run_id, timeout=SAFETY)
        mine = events_of(logs, run.run_id)
        assert [e["event"] for e in mine] == ["run_queued", "run_started", "run_completed"]
        for entry in mine:
            assert entry.keys() >= TRANSITION_FIELDS, entry

    async def test_failed_and_cancelled_runs_log_their_transition(
        self, make_manager: ManagerFactory
    ) -> None:
        manager = make_manager(max_concurrency=1)
        with capture_logs() as logs:
            failing = await manager.submit(_boom)
            await manager.wait(failing.run_id, timeout=SAFETY)
            blocker, queued = Gate(), Gate()
            running = await manager.submit(blocker.body, name="running")
            waiting = await manager.submit(queued.body, name="waiting")
            await wait_event(blocker.started)
            await manager.cancel_task(waiting.run_id)
            await manager.cancel_task(running.run_id)

        ends = {
            run_id: events_of(logs, run_id)[-1]
            for run_id in (failing.run_id, running.run_id, waiting.run_id)
        }
        assert ends[failing.run_id]["event"] == "run_failed"
        assert ends[running.run_id]["event"] == "run_cancelled"
        assert ends[waiting.run_id]["event"] == "run_cancelled"
        for entry in ends.values():
            assert entry.keys() >= TRANSITION_FIELDS, entry
        assert "duration" in ends[failing.run_id]
        assert "duration" in ends[running.run_id]

    async def test_a_retried_run_logs_each_transition_once(
        self, task_manager: BackgroundTaskManager
    ) -> None:
        calls = 0

        async def flaky() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("once")

        with capture_logs() as logs:
            run = await task_manager.submit(flaky, retry=Retry(attempts=2, backoff=0))
            await task_manager.wait(run.run_id, timeout=SAFETY)
        names = [e["event"] for e in events_of(logs, run.run_id)]
        assert names.count("run_started") == 2
        assert names.count("run_retrying") == 1
        assert names.count("run_completed") == 1
        assert "run_failed" not in names
        started = [e for e in events_of(logs, run.run_id) if e["event"] == "run_started"]
        assert [e["attempt"] for e in started] == [1, 2]


class TestLoggingModes:
    """Debug logging decides only whether events are built, never what a run ends as."""

    async def test_the_completion_fast_path_runs_exactly_when_debug_is_off(
        self,
        logging_mode: str,
        task_manager: BackgroundTaskManager,
        runtrack_registry: InMemoryRunRegistry,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        assert task_manager._debug is (logging_mode == DEBUG_ON)
        fast: list[str] = []
        direct = task_manager._completed_direct

        def spy(job: Any, result: Any) -> None:
            fast.append(job.run_id)
            direct(job, result)

        monkeypatch.setattr(task_manager, "_completed_direct", spy)
        ids = [task_manager.start_task(Run(name="plain"), _add(i, 1)) for i in range(5)]
        await task_manager.wait_all(timeout=SAFETY)  # no waiter per run: fast path allowed
        assert fast == ([] if logging_mode == DEBUG_ON else ids)
        for i, run_id in enumerate(ids):
            run = await runtrack_registry.get_run(run_id)
            assert run is not None
            assert (run.status, run.result, run.finished_at is not None) == (
                RunStatus.COMPLETED,
                i + 1,
                True,
            )
        assert task_manager.stats().counts[RunStatus.COMPLETED] == 5


# -- the queued writer (a registry that is not InMemoryRunRegistry) -----------------------


class TestQueuedWriter:
    """A registry that is not InMemoryRunRegistry gets the same behaviour via the queue."""

    async def test_the_delegating_registry_is_a_run_registry(self) -> None:
        assert isinstance(DelegatingRegistry(), RunRegistry)

    async def test_outcomes_are_recorded(self, make_manager: ManagerFactory) -> None:
        registry = DelegatingRegistry()
        manager = make_manager(registry)
        ok = await manager.submit(_add, 2, 3)
        bad = await manager.submit(_boom, "queued failure")
        slow = await manager.submit(Gate().body, timeout=0.05)
        await manager.wait_all(timeout=SAFETY)
        done = await registry.inner.get_run(ok.run_id)
        failed = await registry.inner.get_run(bad.run_id)
        timed_out = await registry.inner.get_run(slow.run_id)
        assert done is not None
        assert failed is not None
        assert timed_out is not None
        assert (done.status, done.result) == (RunStatus.COMPLETED, 5)
        assert (failed.status, failed.error_message) == (RunStatus.FAILED, "queued failure")
        assert (timed_out.status, timed_out.error_type) == (RunStatus.FAILED, "TimeoutError")
        assert manager.stats().counts == await registry.inner.count_runs()

    async def test_start_task_records_the_run(self, make_manager: ManagerFactory) -> None:
        registry = DelegatingRegistry()
        manager = make_manager(registry)
        run_id = manager.start_task(Run(name="queued"), _named_work())
        finished = await manager.wait(run_id, timeout=SAFETY)
        assert (finished.status, finished.name) == (RunStatus.COMPLETED, "queued")

    async def test_cancel_queued_and_running(self, make_manager: ManagerFactory) -> None:
        registry = DelegatingRegistry()
        manager = make_manager(registry, max_concurrency=1)
        blocker, queued = Gate(), Gate()
        running = await manager.submit(blocker.body)
        waiting = await manager.submit(queued.body)
        await wait_event(blocker.started)
        async with asyncio.timeout(0.5):
            assert await manager.cancel_task(waiting.run_id) is True
        assert await manager.cancel_task(running.run_id) is True
        assert blocker.cancelled.is_set()
        assert queued.starts == 0
        for run_id in (running.run_id, waiting.run_id):
            assert await status_of(registry.inner, run_id) is RunStatus.CANCELLED

    async def test_retries_are_recorded(self, make_manager: ManagerFactory) -> None:
        registry = DelegatingRegistry()
        manager = make_manager(registry)
        calls = 0

        async def flaky() -> int:
            nonlocal calls
            calls += 1
            if calls < 2:
                raise ConnectionError("once")
            return calls

        run = await manager.submit(flaky, retry=Retry(attempts=3, backoff=0))
        finished = await manager.wait(run.run_id, timeout=SAFETY)
        assert (finished.status, finished.attempt, finished.result) == (
            RunStatus.COMPLETED,
            2,
            2,
        )

    async def test_cancel_from_another_manager_reaches_the_owner(
        self, make_manager: ManagerFactory
    ) -> None:
        registry = DelegatingRegistry()
        owner, other = make_manager(registry), make_manager(registry)
        gate = Gate()
        run = await owner.submit(gate.body)
        await wait_event(gate.started)
        assert await other.cancel_task(run.run_id) is True
        await wait_event(gate.cancelled)
        finished = await owner.wait(run.run_id, timeout=SAFETY)
        assert finished.status is RunStatus.CANCELLED
        assert await status_of(registry.inner, run.run_id) is RunStatus.CANCELLED

    async def test_cancel_a_queued_run_of_another_manager(
        self, make_manager: ManagerFactory
    ) -> None:
        registry = DelegatingRegistry()
        owner, other = make_manager(registry, max_concurrency=1), make_manager(registry)
        events: list[RunEvent] = []
        owner.add_listener(events.append)
        blocker, queued = Gate(), Gate()
        await owner.submit(blocker.body)
        waiting = await owner.submit(queued.body)
        await wait_event(blocker.started)
        assert await other.cancel_task(waiting.run_id) is True
        blocker.open()
        finished = await owner.wait(waiting.run_id, timeout=SAFETY)
        await owner.wait_all(timeout=SAFETY)
        assert finished.status is RunStatus.CANCELLED
        assert not queued.starts or queued.cancelled.is_set()
        terminal = [e.status for e in events if e.run_id == waiting.run_id and e.status.is_terminal]
        assert terminal == [RunStatus.CANCELLED]
        assert owner.stats().counts == await registry.inner.count_runs()
