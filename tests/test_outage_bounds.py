"""While the registry is unreachable, nothing that waits for it waits for ever.

`shutdown` cancels what is left after its grace, gives the unwritten records
``registry_timeout`` seconds and logs what it could not write, once; `cancel_task`, `wait`
and `wait_all` raise `RegistryUnavailableError` after ``registry_timeout`` seconds of an
outage. Tested with a real Redis and PostgreSQL behind a TCP proxy that the test cuts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from runtrack import (
    BackgroundTaskManager,
    InMemoryRunRegistry,
    ManagerInfo,
    RegistryUnavailableError,
    Run,
    RunStatus,
)
from test_outage import PAIRS

GRACE = 0.5
CANCEL_TIMEOUT = 1.0
REGISTRY_TIMEOUT = 1.0
#: Slack for a machine busy with other test suites; the bug this guards against hung for
#: minutes (70 s on PostgreSQL, over 200 s on Redis).
SLACK = 10.0


async def _until(condition: object, what: str, timeout: float = 20.0) -> None:
    """Poll ``condition()`` until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("backend", sorted(PAIRS))
async def test_shutdown_during_an_outage_returns_and_logs_what_was_lost(backend: str) -> None:
    async with PAIRS[backend]() as (proxied, direct, proxy):
        manager = BackgroundTaskManager(
            proxied,
            shutdown_grace=GRACE,
            cancel_timeout=CANCEL_TIMEOUT,
            registry_timeout=REGISTRY_TIMEOUT,
        )
        await manager.__aenter__()
        finish = asyncio.Event()
        forever = asyncio.Event()

        async def quick(i: int) -> int:
            await finish.wait()
            return i

        async def stuck() -> None:
            await forever.wait()

        quick_ids = [manager.start_task(Run(name="quick"), quick(i)) for i in range(5)]
        stuck_ids = [manager.start_task(Run(name="stuck"), stuck()) for _ in range(3)]
        await manager._writer.flush()  # every run is RUNNING in the registry
        proxy.cut()
        finish.set()  # the quick runs end while their final records cannot be written
        await _until(lambda: manager.get_active_task_count() == len(stuck_ids), "quick runs")

        with capture_logs() as logs:
            started = time.monotonic()
            async with asyncio.timeout(GRACE + CANCEL_TIMEOUT + REGISTRY_TIMEOUT + SLACK):
                await manager.shutdown()
            took = time.monotonic() - started
        assert took >= GRACE  # the grace was given
        lost = [e for e in logs if e["event"] == "registry_writes_lost"]
        assert len(lost) == 1, logs  # logged once, with every run
        statuses = {r["run_id"]: r["status"] for r in lost[0]["runs"]}
        assert {i: statuses.get(i) for i in quick_ids} == dict.fromkeys(quick_ids, "completed")
        assert {i: statuses.get(i) for i in stuck_ids} == dict.fromkeys(stuck_ids, "cancelled")
        assert manager.get_active_task_count() == 0
        # What the registry holds is what landed before the cut: the runs RUNNING.
        proxy.restore()
        for run_id in quick_ids + stuck_ids:
            run = await direct.get_run(run_id)
            assert run is not None
            assert run.status is RunStatus.RUNNING


@pytest.mark.parametrize("backend", sorted(PAIRS))
async def test_cancel_wait_and_wait_all_give_up_after_registry_timeout(backend: str) -> None:
    async with (
        PAIRS[backend]() as (proxied, direct, proxy),
        BackgroundTaskManager(
            proxied, registry_timeout=REGISTRY_TIMEOUT, shutdown_grace=0
        ) as manager,
    ):
        finish = asyncio.Event()
        forever = asyncio.Event()

        async def quick() -> str:
            await finish.wait()
            return "done"

        async def stuck() -> None:
            await forever.wait()

        done_id = manager.start_task(Run(name="quick"), quick())
        stuck_id = manager.start_task(Run(name="stuck"), stuck())
        await manager._writer.flush()
        proxy.cut()
        finish.set()
        await _until(lambda: not manager.is_task_active(done_id), "the quick run")

        bound = REGISTRY_TIMEOUT * 2 + SLACK
        for call in (
            manager.wait(done_id),
            manager.cancel_task(stuck_id),
            manager.wait_all(),
        ):
            started = time.monotonic()
            with pytest.raises(RegistryUnavailableError, match=backend):
                async with asyncio.timeout(bound):
                    await call
            assert time.monotonic() - started >= REGISTRY_TIMEOUT
        assert not manager.is_task_active(stuck_id)  # stopped here all the same

        proxy.restore()  # the writes were kept: they land once it is back
        await manager.wait_all(timeout=30)
        assert (await manager.wait(done_id, timeout=30)).result == "done"
        stuck_run = await direct.get_run(stuck_id)
        assert stuck_run is not None
        assert stuck_run.status is RunStatus.CANCELLED


class _DownReads(InMemoryRunRegistry):
    """Memory registry whose heartbeat and lease reads fail while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.failed_reads = 0
        self.enough = asyncio.Event()

    def _fail(self) -> None:
        self.failed_reads += 1
        if self.failed_reads >= 8:
            self.enough.set()
        raise RegistryUnavailableError("flaky", "connection refused")

    async def get_statuses(self, run_ids: Sequence[str]) -> dict[str, RunStatus]:
        if self.down:
            self._fail()
        return await super().get_statuses(run_ids)

    async def list_runs(self, **filters: Any) -> list[Run]:
        if self.down:
            self._fail()
        return await super().list_runs(**filters)

    async def heartbeat_manager(self, owner: str, at: datetime, running: int) -> bool:
        if self.down:
            self._fail()
        return await super().heartbeat_manager(owner, at, running)

    async def list_managers(self) -> list[ManagerInfo]:
        if self.down:
            self._fail()
        return await super().list_managers()

    async def cancelled_runs(self, owner: str, since: datetime) -> list[str]:
        if self.down:
            self._fail()
        return await super().cancelled_runs(owner, since)


async def test_heartbeat_and_lease_failures_are_logged_once_per_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not the in-memory fast path: heartbeats read statuses from the registry.
    monkeypatch.setattr("runtrack._recording.InMemoryRunRegistry", type("NotIt", (), {}))
    registry = _DownReads()
    forever = asyncio.Event()

    async def stuck() -> None:
        await forever.wait()

    with capture_logs() as logs:
        async with BackgroundTaskManager(
            registry, heartbeat_interval=0.02, lease=0.05, shutdown_grace=0
        ) as manager:
            manager.start_task(Run(name="stuck"), stuck())
            registry.down = True
            await asyncio.wait_for(registry.enough.wait(), 30)  # failed beats and looks
            registry.down = False
            await _until(
                lambda: (
                    {"heartbeat_recovered", "lease_check_recovered"} <= {e["event"] for e in logs}
                ),
                "recovery",
            )
    events = [e["event"] for e in logs]
    assert events.count("heartbeat_failed") == 1
    assert events.count("lease_check_failed") == 1
    assert events.count("heartbeat_recovered") == 1
    assert events.count("lease_check_recovered") == 1
    assert events.count("cancel_poll_failed") <= 1
    failed = next(e for e in logs if e["event"] == "heartbeat_failed")
    assert "exc_info" not in failed  # one line, not a traceback per beat
    assert "connection refused" in failed["error"]
