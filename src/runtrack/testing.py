"""runtrack's pytest plugin, registered through the ``pytest11`` entry point.

Fixtures:
    runtrack_registry: a fresh `InMemoryRunRegistry` for the test.
    task_manager: a started `BackgroundTaskManager` on that registry. At teardown it waits
        for every run (``wait_all``), fails the test if a run is still active or left
        QUEUED/RUNNING in the registry, and shuts the manager down.

Example:
    >>> async def test_report(task_manager):  # doctest: +SKIP
    ...     run = await task_manager.submit(build_report, 42)
    ...     assert (await task_manager.wait(run.run_id)).status == "completed"
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from runtrack._manager import BackgroundTaskManager
from runtrack._status import RunStatus
from runtrack.registry.memory import InMemoryRunRegistry

__all__ = ["TEARDOWN_TIMEOUT", "runtrack_registry", "task_manager"]

#: Seconds the ``task_manager`` fixture waits for runs at teardown before failing the test.
TEARDOWN_TIMEOUT = 10.0


@pytest_asyncio.fixture
async def runtrack_registry() -> AsyncIterator[InMemoryRunRegistry]:
    """A fresh in-memory registry, closed after the test."""
    async with InMemoryRunRegistry() as registry:
        yield registry


@pytest_asyncio.fixture
async def task_manager(
    runtrack_registry: InMemoryRunRegistry,
) -> AsyncIterator[BackgroundTaskManager]:
    """A started manager on ``runtrack_registry``; teardown fails the test on leaked runs."""
    manager = BackgroundTaskManager(runtrack_registry, heartbeat_interval=0.05)
    async with manager:
        yield manager
        try:
            await manager.wait_all(timeout=TEARDOWN_TIMEOUT)
        except TimeoutError:
            leaked = manager.get_active_task_ids()
            await manager.shutdown(grace=0)
            pytest.fail(
                f"task_manager: {len(leaked)} run(s) still active {TEARDOWN_TIMEOUT}s after "
                f"the test: {leaked[:10]}; await manager.wait(...) or cancel them in the test"
            )
    stuck = await runtrack_registry.list_runs(
        status=[RunStatus.QUEUED, RunStatus.RUNNING], limit=10
    )
    if stuck:
        pytest.fail(
            "task_manager: runs left non-terminal in the registry after shutdown: "
            + ", ".join(f"{r.run_id} ({r.status.value})" for r in stuck)
        )
