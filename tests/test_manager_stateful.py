"""A hypothesis state machine over submit / cancel / complete / fail / shutdown.

The machine drives its own event loop (an `asyncio.Runner` per example). Every run it
submits awaits a future the machine holds, so the ``complete`` and ``fail`` rules decide
how runs end, and ``cancel`` and ``shutdown`` race them. After each step the loop is let
run until the manager and the registry stop changing, and the invariants check that every
run ends in exactly one terminal status (never overwritten, reported once to listeners),
that the registry's counts agree with the manager's stats, and that nothing is QUEUED or
RUNNING after shutdown.

The machine runs on the in-memory registry (directly, or behind the queued writer), and
with fewer examples on SQLite, PostgreSQL and Redis, where every write goes through the
manager's group-committing `BatchWriter` (a fresh schema or key prefix per example).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import event as note
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from helpers import ACTIVE, SAFETY, DelegatingRegistry
from redis_registries import redis_registry
from registries import RegistryFactory
from runtrack import (
    BackgroundTaskManager,
    InMemoryRunRegistry,
    ManagerClosedError,
    Run,
    RunEvent,
    RunRegistry,
    RunStatus,
)
from sql_registries import postgres_registry, sqlite_registry

T = TypeVar("T")


async def controlled(outcome: asyncio.Future[str]) -> str:
    """A run body: it ends when the machine resolves ``outcome``."""
    return await asyncio.shield(outcome)


class ManagerMachine(RuleBasedStateMachine):
    """Submits, completes, fails, cancels and shuts down; checks one terminal status each."""

    #: The backend's registry factory; None for the in-memory registry.
    backend: ClassVar[RegistryFactory | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.loop_errors: list[dict[str, Any]] = []
        self.runner.get_loop().set_exception_handler(
            lambda _loop, context: self.loop_errors.append(context)
        )
        self.stack = AsyncExitStack()
        self.registry: RunRegistry
        factory = type(self).backend
        if factory is None:
            self.registry = InMemoryRunRegistry()
        else:
            try:
                self.registry = self.run(self.stack.enter_async_context(factory()))
            except BaseException:
                self.runner.close()
                raise
        self._manager: BackgroundTaskManager | None = None
        self.outcomes: dict[str, asyncio.Future[str]] = {}
        self.run_ids: list[str] = []
        self.first_terminal: dict[str, RunStatus] = {}
        self.events: list[RunEvent] = []
        self.closed = False
        self.allowed: int | None = None  # most runs that may be RUNNING at once now

    @property
    def manager(self) -> BackgroundTaskManager:
        assert self._manager is not None
        return self._manager

    # -- driving the loop ---------------------------------------------------------------

    def run(self, awaitable: Awaitable[T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(SAFETY):
                return await awaitable

        # Runner.run() would install and remove a SIGINT handler on every call, which costs
        # more than the step itself; the runner's loop runs the step directly instead.
        return self.runner.get_loop().run_until_complete(bounded())

    async def _settle(self) -> None:
        """Let the loop run until neither the manager nor the registry changes any more."""
        previous: object = None
        stable = 0
        for _ in range(500):
            await asyncio.sleep(0)
            # The queued writer's pending writes land first (a round trip on a server).
            await self.manager._writer.flush()
            snapshot = (
                tuple(sorted(self.manager.stats().counts.items())),
                tuple(sorted((await self.registry.count_runs()).items())),
                len(self.events),
            )
            stable = stable + 1 if snapshot == previous else 0
            if stable >= 3:
                return
            previous = snapshot
        raise AssertionError("the manager never settled")

    def settle(self) -> None:
        self.run(self._settle())

    def statuses(self) -> dict[str, RunStatus]:
        """Every run's status in the registry, read in one go."""
        runs = self.run(self.registry.list_runs(limit=10_000))
        return {run.run_id: run.status for run in runs}

    def status(self, run_id: str) -> RunStatus:
        return self.statuses()[run_id]

    def unresolved(self) -> list[str]:
        """Runs still active whose outcome the machine has not decided yet."""
        statuses = self.statuses()
        return [
            run_id
            for run_id in self.run_ids
            if not self.outcomes[run_id].done() and statuses[run_id] in ACTIVE
        ]

    # -- rules --------------------------------------------------------------------------

    @initialize(
        max_concurrency=st.sampled_from([1, 2, 3, None]),
        queued_writer=st.booleans(),
        initial=st.lists(st.integers(min_value=-2, max_value=2), min_size=3, max_size=8),
    )
    def start(self, max_concurrency: int | None, queued_writer: bool, initial: list[int]) -> None:
        async def make() -> BackgroundTaskManager:
            registry: RunRegistry = self.registry
            if queued_writer and isinstance(registry, InMemoryRunRegistry):
                registry = DelegatingRegistry(registry)
            manager = BackgroundTaskManager(
                registry,
                max_concurrency=max_concurrency,
                heartbeat_interval=60,
                cancel_timeout=SAFETY,
            )
            manager.add_listener(self.events.append)
            return manager

        self._manager = self.run(make())
        self.allowed = max_concurrency
        for priority in initial:
            self.submit(priority, None)

    @rule(priority=st.integers(min_value=-2, max_value=2), delay=st.sampled_from([None, 0]))
    def submit(self, priority: int, delay: float | None) -> None:
        outcome: asyncio.Future[str] = self.runner.get_loop().create_future()

        async def go() -> Run:
            return await self.manager.submit(
                controlled, outcome, name="machine", priority=priority, delay=delay
            )

        if self.closed:
            with pytest.raises(ManagerClosedError):
                self.run(go())
            outcome.cancel()
            return
        run = self.run(go())
        assert run.status is RunStatus.QUEUED
        self.outcomes[run.run_id] = outcome
        self.run_ids.append(run.run_id)
        self.settle()

    @precondition(lambda self: bool(self.run_ids))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        candidates = self.unresolved()
        if not candidates:
            return
        run_id = data.draw(st.sampled_from(candidates), label="run")
        before = self.status(run_id)
        note(f"complete a {before.value} run")
        self.outcomes[run_id].set_result(f"result of {run_id}")
        self.settle()
        if before is RunStatus.RUNNING:
            run = self.run(self.registry.get_run(run_id))
            assert run is not None
            assert (run.status, run.result) == (RunStatus.COMPLETED, f"result of {run_id}")

    @precondition(lambda self: bool(self.run_ids))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        candidates = self.unresolved()
        if not candidates:
            return
        run_id = data.draw(st.sampled_from(candidates), label="run")
        before = self.status(run_id)
        note(f"fail a {before.value} run")
        self.outcomes[run_id].set_exception(ValueError(f"{run_id} failed"))
        self.settle()
        if before is RunStatus.RUNNING:
            run = self.run(self.registry.get_run(run_id))
            assert run is not None
            assert (run.status, run.error_type) == (RunStatus.FAILED, "ValueError")

    @precondition(lambda self: bool(self.run_ids))
    @rule(data=st.data(), only_active=st.booleans())
    def cancel(self, data: st.DataObject, only_active: bool) -> None:
        statuses = self.statuses()
        # Newest first: hypothesis favours early elements, and new runs are the queued ones.
        newest_first = self.run_ids[::-1]
        candidates = [r for r in newest_first if statuses[r] in ACTIVE] if only_active else []
        run_id = data.draw(st.sampled_from(candidates or newest_first), label="run")
        before = statuses[run_id]
        note(f"cancel a {before.value} run")
        cancelled = self.run(self.manager.cancel_task(run_id))
        self.settle()
        after = self.status(run_id)
        if before in ACTIVE:
            assert cancelled is True, f"cancel_task returned False for a {before.value} run"
            assert after is RunStatus.CANCELLED
        else:
            assert cancelled is False, f"cancel_task returned True for a {before.value} run"
            assert after is before

    @rule(limit=st.none() | st.integers(min_value=1, max_value=3))
    def resize(self, limit: int | None) -> None:
        running = self.manager.stats().running
        self.manager.set_max_concurrency(limit)
        self.allowed = None if limit is None else max(limit, running)
        self.settle()

    @precondition(lambda self: not self.closed)
    @rule(drain=st.booleans())
    def shutdown(self, drain: bool) -> None:
        before = self.statuses()
        active = [r for r in self.run_ids if before[r] in ACTIVE]
        if drain:
            # Decide every open run, then let shutdown wait for them all.
            for run_id in active:
                if not self.outcomes[run_id].done():
                    self.outcomes[run_id].set_result(f"result of {run_id}")
            self.run(self.manager.shutdown(grace=SAFETY))
        else:
            self.run(self.manager.shutdown(grace=0))
        self.closed = True
        self.settle()
        after = self.statuses()
        for run_id in active:
            status = after[run_id]
            if drain:
                assert status in {RunStatus.COMPLETED, RunStatus.FAILED}, status
            else:
                assert status is RunStatus.CANCELLED, status

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def steady_state_holds(self) -> None:
        statuses = self.statuses()
        counts = self.run(self.registry.count_runs())
        assert set(statuses) == set(self.run_ids)
        self.check_each_run_ends_in_exactly_one_terminal_status(statuses)
        self.check_registry_counts_agree_with_the_managers_stats(counts)
        if self.closed:
            self.check_nothing_is_active_after_shutdown(counts)
        assert self.loop_errors == [], "an error reached the event loop"

    def check_each_run_ends_in_exactly_one_terminal_status(
        self, statuses: dict[str, RunStatus]
    ) -> None:
        terminal_events: dict[str, list[RunStatus]] = {}
        for event in self.events:
            if event.status.is_terminal:
                terminal_events.setdefault(event.run_id, []).append(event.status)
        for run_id, status in statuses.items():
            first = self.first_terminal.get(run_id)
            if first is not None:
                assert status is first, f"{run_id}: terminal {first.value} became {status.value}"
            elif status.is_terminal:
                self.first_terminal[run_id] = status
            seen = terminal_events.get(run_id, [])
            expected = [status] if status.is_terminal else []
            assert seen == expected, f"{run_id}: {status.value} in the registry, events {seen}"

    def check_registry_counts_agree_with_the_managers_stats(
        self, counts: dict[RunStatus, int]
    ) -> None:
        stats = self.manager.stats()
        assert stats.counts == counts
        assert sum(counts.values()) == len(self.run_ids)
        assert stats.queued == counts[RunStatus.QUEUED]
        assert stats.running == counts[RunStatus.RUNNING]
        active = counts[RunStatus.QUEUED] + counts[RunStatus.RUNNING]
        assert self.manager.get_active_task_count() == active
        if self.allowed is not None:
            assert stats.running <= self.allowed, (stats.running, self.allowed)
            # Runs over a lowered limit may finish, but no run is admitted above it.
            limit = self.manager.max_concurrency
            assert limit is not None
            self.allowed = max(limit, min(self.allowed, stats.running))

    def check_nothing_is_active_after_shutdown(self, counts: dict[RunStatus, int]) -> None:
        assert counts[RunStatus.QUEUED] == counts[RunStatus.RUNNING] == 0, counts
        assert self.manager.get_active_task_count() == 0

    def teardown(self) -> None:
        try:
            if self._manager is not None and not self.closed:
                self.run(self.manager.shutdown(grace=0))
                self.closed = True
                self.check_nothing_is_active_after_shutdown(self.run(self.registry.count_runs()))
            for outcome in self.outcomes.values():
                if not outcome.done():
                    outcome.cancel()
                elif not outcome.cancelled():
                    outcome.exception()  # retrieved: no "never retrieved" noise at GC
        finally:
            try:
                self.run(self.stack.aclose())
            finally:
                self.runner.close()


ManagerMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
TestManagerMachine = ManagerMachine.TestCase


def _on(backend: str, factory: RegistryFactory) -> type[ManagerMachine]:
    """The machine on a real backend, with fewer and shorter examples (each is slower)."""
    machine: type[ManagerMachine] = type(
        f"ManagerMachineOn{backend}", (ManagerMachine,), {"backend": factory}
    )
    machine.TestCase.settings = settings(
        max_examples=8, stateful_step_count=15, deadline=None, database=None
    )
    return machine


TestManagerMachineOnSQLite = _on("SQLite", sqlite_registry).TestCase
TestManagerMachineOnPostgreSQL = _on("PostgreSQL", postgres_registry).TestCase
TestManagerMachineOnRedis = _on("Redis", redis_registry).TestCase
