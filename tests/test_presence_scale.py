"""Heartbeats and lease checks cost O(managers), not O(runs).

- PostgreSQL, 2,000 RUNNING runs, 10 heartbeats: the runs table receives no update, the
  managers table about one per beat (counted exactly by triggers: ``pg_stat_user_tables``
  is flushed asynchronously by the other backends).
- The event loop is never blocked for long by the heartbeat path: with 10,000 RUNNING
  runs on PostgreSQL and 100,000 on the memory registry, no event-loop callback takes
  more than 100 ms of CPU while the manager beats, polls for cancels and checks leases.
  CPU time per callback (not wall time) keeps the check meaningful on a busy machine;
  the wall-clock lag of a sleep probe is reported alongside, not asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from helpers import SAFETY
from runtrack import BackgroundTaskManager, InMemoryRunRegistry, Run, RunRegistry
from runtrack.registry.sql import SQLRunRegistry
from sql_registries import postgres_url, sql_registry

#: Most CPU seconds one event-loop callback may take while only the heartbeat path runs.
MAX_SLICE = 0.1
BEAT = 0.2


async def _all_running(manager: BackgroundTaskManager, count: int, gate: asyncio.Event) -> None:
    for _ in range(count):
        manager.start_task(Run(name="wait"), gate.wait())
    async with asyncio.timeout(10 * SAFETY):
        while True:
            if manager.stats().running >= count:
                break
            await asyncio.sleep(0.05)
        await manager._writer.flush()


async def _count_updates(registry: SQLRunRegistry) -> None:
    prefix = registry.table_prefix
    async with registry.engine.begin() as conn:
        await conn.execute(sa.text(f"CREATE TABLE {prefix}upd (tbl text PRIMARY KEY, n bigint)"))
        await conn.execute(
            sa.text(
                f"CREATE FUNCTION {prefix}count_upd() RETURNS trigger AS $$ BEGIN "
                f"INSERT INTO {prefix}upd VALUES (TG_TABLE_NAME, 1) "
                f"ON CONFLICT (tbl) DO UPDATE SET n = {prefix}upd.n + 1; RETURN NULL; END "
                "$$ LANGUAGE plpgsql"
            )
        )
        for table in ("runs", "managers"):
            await conn.execute(
                sa.text(
                    f"CREATE TRIGGER {prefix}{table}_upd AFTER UPDATE ON {prefix}{table} "
                    f"FOR EACH ROW EXECUTE FUNCTION {prefix}count_upd()"
                )
            )


async def _updates(registry: SQLRunRegistry) -> dict[str, int]:
    prefix = registry.table_prefix
    async with registry.engine.connect() as conn:
        rows = (await conn.execute(sa.text(f"SELECT tbl, n FROM {prefix}upd"))).all()
    found = {str(tbl).removeprefix(prefix): int(n) for tbl, n in rows}
    return {"runs": found.get("runs", 0), "managers": found.get("managers", 0)}


async def test_heartbeats_do_not_update_the_runs_table_on_postgresql() -> None:
    async with sql_registry(postgres_url()) as registry:
        await _count_updates(registry)
        try:
            gate = asyncio.Event()
            manager = BackgroundTaskManager(
                registry, heartbeat_interval=BEAT, poll_interval=BEAT, shutdown_grace=0
            )
            async with manager:
                await _all_running(manager, 2000, gate)
                before = await _updates(registry)
                started = time.monotonic()
                async with asyncio.timeout(10 * SAFETY):
                    while True:
                        if (await _updates(registry))["managers"] >= before["managers"] + 10:
                            break
                        await asyncio.sleep(BEAT / 2)
                elapsed = time.monotonic() - started
                after = await _updates(registry)
                gate.set()
        finally:
            prefix = registry.table_prefix
            async with registry.engine.begin() as conn:
                await conn.execute(sa.text(f"DROP TABLE IF EXISTS {prefix}upd"))
                await conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {prefix}count_upd CASCADE"))
    assert after["runs"] == before["runs"]  # not one heartbeat write per run
    beats = after["managers"] - before["managers"]
    assert 10 <= beats <= elapsed / BEAT + 2  # one write per beat, whatever the runs


class _SliceMeter:
    """The CPU time of every event-loop callback (`asyncio.Handle._run`), while on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = False
        self.longest = 0.0
        self.callbacks = 0
        original = asyncio.events.Handle._run
        meter = self

        def timed(handle: Any) -> None:
            if not meter.on:
                return original(handle)
            start = time.thread_time()
            try:
                return original(handle)
            finally:
                meter.callbacks += 1
                meter.longest = max(meter.longest, time.thread_time() - start)

        monkeypatch.setattr(asyncio.events.Handle, "_run", timed)


async def _lag_probe(stop: asyncio.Event) -> float:
    """The worst wall-clock overshoot of a 10 ms sleep until ``stop`` (reported only)."""
    worst = 0.0
    while not stop.is_set():
        start = time.monotonic()
        await asyncio.sleep(0.01)
        worst = max(worst, time.monotonic() - start - 0.01)
    return worst


async def _stall_check(
    registry: RunRegistry, runs: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[float, float]:
    meter = _SliceMeter(monkeypatch)
    gate = asyncio.Event()
    # lease 3 beats: a lease check every beat
    manager = BackgroundTaskManager(
        registry, heartbeat_interval=BEAT, poll_interval=BEAT, lease=3 * BEAT, shutdown_grace=0
    )
    async with manager:
        await _all_running(manager, runs, gate)
        assert manager._heartbeat.presence is not None
        beats = 0
        original = manager._heartbeat.presence.interrupt_expired

        async def counted() -> None:
            nonlocal beats
            beats += 1
            await original()

        manager._heartbeat.presence.interrupt_expired = counted  # type: ignore[method-assign]
        stop = asyncio.Event()
        probe = asyncio.create_task(_lag_probe(stop))
        meter.on = True
        async with asyncio.timeout(10 * SAFETY):
            while True:
                if beats >= 5:
                    break
                await asyncio.sleep(BEAT / 2)
        meter.on = False
        stop.set()
        lag = await probe
        gate.set()
    return meter.longest, lag


@pytest.fixture
async def postgres() -> AsyncIterator[SQLRunRegistry]:
    async with sql_registry(postgres_url()) as registry:
        yield registry


async def test_no_stall_with_10k_running_runs_on_postgresql(
    postgres: SQLRunRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    longest, lag = await _stall_check(postgres, 10_000, monkeypatch)
    print(f"postgresql 10k: longest callback {longest * 1000:.1f} ms CPU, lag {lag * 1000:.1f} ms")
    assert longest < MAX_SLICE


async def test_no_stall_with_100k_running_runs_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    longest, lag = await _stall_check(InMemoryRunRegistry(), 100_000, monkeypatch)
    print(f"memory 100k: longest callback {longest * 1000:.1f} ms CPU, lag {lag * 1000:.1f} ms")
    assert longest < MAX_SLICE
