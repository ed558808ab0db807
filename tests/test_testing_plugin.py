"""The pytest plugin (`runtrack.testing`): its fixtures, and the leak check at teardown.

The leak checks run an inner pytest session with ``pytester``; it finds the plugin through
the ``pytest11`` entry point, exactly as a user's test suite would.
"""

from __future__ import annotations

import pytest

import runtrack.testing
from runtrack import BackgroundTaskManager, InMemoryRunRegistry, RunStatus

pytest_plugins = ["pytester"]

INNER_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
"""

#: Shortens the teardown wait of the inner session's task_manager, which is 10 s by default.
INNER_CONFTEST = """
import pytest

import runtrack.testing


@pytest.fixture(autouse=True)
def _short_teardown(monkeypatch):
    monkeypatch.setattr(runtrack.testing, "TEARDOWN_TIMEOUT", 0.2)
"""


#: Plugins the inner sessions do not need (hypothesis' summary alone costs a second each).
INNER_ARGS = ("-p", "no:randomly", "-p", "no:hypothesispytest", "-p", "no:anyio")


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory configured like a user's async test suite."""
    pytester.makeini(INNER_INI)
    pytester.makeconftest(INNER_CONFTEST)
    return pytester


class TestFixtures:
    """runtrack_registry and task_manager give a test a working, isolated setup."""

    async def test_runtrack_registry_is_a_fresh_in_memory_registry(
        self, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        assert isinstance(runtrack_registry, InMemoryRunRegistry)
        assert sum((await runtrack_registry.count_runs()).values()) == 0

    async def test_task_manager_is_started_on_the_tests_registry(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        assert isinstance(task_manager, BackgroundTaskManager)
        assert task_manager.registry is runtrack_registry
        assert task_manager.stats().state == "running"
        assert task_manager.get_active_task_count() == 0

    async def test_task_manager_runs_work_into_the_registry(
        self, task_manager: BackgroundTaskManager, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        async def work(x: int) -> int:
            return x * 2

        run = await task_manager.submit(work, 21)
        assert (await task_manager.wait(run.run_id, timeout=2)).result == 42
        recorded = await runtrack_registry.get_run(run.run_id)
        assert recorded is not None
        assert recorded.status is RunStatus.COMPLETED

    async def test_each_test_gets_its_own_registry(
        self, runtrack_registry: InMemoryRunRegistry
    ) -> None:
        # The previous test recorded a run in its registry; this one starts empty.
        assert await runtrack_registry.list_runs() == []

    def test_the_plugin_is_registered_through_the_entry_point(
        self, pytestconfig: pytest.Config
    ) -> None:
        plugin = pytestconfig.pluginmanager.get_plugin("runtrack")
        assert plugin is runtrack.testing


class TestLeakCheck:
    """task_manager's teardown waits for runs and fails a test that leaks one."""

    def test_a_clean_test_passes(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            async def work():
                return "ok"

            async def test_clean(task_manager, runtrack_registry):
                run = await task_manager.submit(work)
                assert (await task_manager.wait(run.run_id)).result == "ok"
                assert (await runtrack_registry.get_run(run.run_id)).status == "completed"
            """
        )
        result = inner.runpytest(*INNER_ARGS)
        result.assert_outcomes(passed=1)

    def test_a_run_still_going_at_the_end_is_awaited(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            import asyncio

            finished = []

            async def brief():
                for _ in range(10):
                    await asyncio.sleep(0)
                finished.append(True)

            async def test_fire_and_forget(task_manager):
                await task_manager.submit(brief)
                assert finished == []

            def test_teardown_waited_for_the_run():
                assert finished == [True]
            """
        )
        result = inner.runpytest(*INNER_ARGS)
        result.assert_outcomes(passed=2)

    def test_a_leaked_run_fails_the_test_at_teardown(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            import asyncio

            async def forever():
                await asyncio.Event().wait()

            async def test_leaky(task_manager):
                await task_manager.submit(forever, run_id="leaked-run")
            """
        )
        result = inner.runpytest(*INNER_ARGS)
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(["*task_manager*still active*", "*leaked-run*"])

    def test_a_run_left_active_in_the_registry_fails_the_test(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            from runtrack import Run

            async def test_stray_record(task_manager, runtrack_registry):
                await runtrack_registry.add_run(Run(run_id="stray-run", name="stray"))
            """
        )
        result = inner.runpytest(*INNER_ARGS)
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(["*non-terminal*stray-run*"])

    def test_a_leaked_run_is_cancelled_not_left_running(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            import asyncio

            import pytest

            from runtrack import RunStatus

            cancelled = []

            async def forever():
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.append(True)
                    raise

            @pytest.fixture
            async def check_after(runtrack_registry):
                yield
                # Torn down after task_manager: the leak was cancelled and recorded so.
                assert cancelled == [True]
                run = await runtrack_registry.get_run("leaked-run")
                assert run.status is RunStatus.CANCELLED

            async def test_leaky(check_after, task_manager):
                await task_manager.submit(forever, run_id="leaked-run")
            """
        )
        result = inner.runpytest(*INNER_ARGS)
        # One error: task_manager's failure. check_after's own assertions passed.
        result.assert_outcomes(passed=1, errors=1)
        assert "assert cancelled" not in result.stdout.str()
