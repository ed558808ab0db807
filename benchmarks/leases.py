"""Section ``leases``: what liveness costs with 100,000 RUNNING runs on PostgreSQL.

The registry holds 100,000 RUNNING runs of one live manager (registered, lease 60 s) and
100 of a dead one. Measured, each the median of several calls:

- the lease check as managers do it now: ``interrupt_dead_managers`` (reads the managers
  table; nobody dead), and the sweep of the dead owner (one statement through the index
  by owner and status);
- one heartbeat (``heartbeat_manager``, one row) and one look for cancelled runs
  (``cancelled_runs``, indexed by owner and status);
- the per-run machinery it replaces, once each: the lease scan of every RUNNING run
  (``_leases.expired_runs``, offset-paged) and the heartbeat's status read of 100,000
  run ids (``get_statuses``).

Uses ``--postgres-url`` (the persist sections' option).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import uuid
from datetime import timedelta
from time import perf_counter
from typing import Any

from _harness import Check, Column, SectionResult, Table, log, section
from _persist import POSTGRES_URL, reachable

RUNS = 100_000
DEAD_RUNS = 100
REPEAT = 9


def _available(args: argparse.Namespace) -> str | None:
    return reachable(getattr(args, "postgres_url", POSTGRES_URL), 5432, "PostgreSQL")


async def _median(call: Any, repeat: int = REPEAT) -> float:
    times = []
    for _ in range(repeat):
        start = perf_counter()
        await call()
        times.append(perf_counter() - start)
    return statistics.median(times)


async def _measure(url: str, quiet: bool) -> dict[str, float]:
    from runtrack import ManagerInfo, Run, RunStatus
    from runtrack._leases import expired_runs
    from runtrack._models import utcnow
    from runtrack.registry.base import RunWrite, stored_run
    from runtrack.registry.sql import SQLRunRegistry

    registry = SQLRunRegistry(url, table_prefix=f"bench_{uuid.uuid4().hex[:8]}_")
    out: dict[str, float] = {}
    try:
        now = utcnow()
        await registry.register_manager(
            ManagerInfo(owner="live", started_at=now, heartbeat_at=now, lease_seconds=60)
        )
        log(f"leases: inserting {RUNS:,} RUNNING runs", quiet=quiet)
        ids: list[str] = []
        for start in range(0, RUNS + DEAD_RUNS, 500):
            writes = []
            for i in range(start, min(start + 500, RUNS + DEAD_RUNS)):
                owner = "live" if i < RUNS else "dead"
                run = Run(name="sleep", status=RunStatus.RUNNING, owner=owner, started_at=now)
                ids.append(run.run_id)
                writes.append(RunWrite(run.run_id, stored=stored_run(run)))
            await registry.write_batch(writes)
        async with registry.engine.begin() as conn:
            await conn.exec_driver_sql(f"ANALYZE {registry.table_prefix}runs")

        out["lease check, nobody dead"] = await _median(
            lambda: registry.interrupt_dead_managers(utcnow(), "survivor")
        )
        out["heartbeat (one row)"] = await _median(
            lambda: registry.heartbeat_manager("live", utcnow(), RUNS)
        )
        out["look for cancelled runs"] = await _median(
            lambda: registry.cancelled_runs("live", utcnow() - timedelta(seconds=10))
        )
        old = utcnow() - timedelta(seconds=120)
        await registry.register_manager(
            ManagerInfo(owner="dead", started_at=old, heartbeat_at=old, lease_seconds=60)
        )
        start = perf_counter()
        swept = await registry.interrupt_dead_managers(utcnow(), "survivor")
        out[f"sweep of a dead owner ({len(swept)} runs)"] = perf_counter() - start
        log("leases: the per-run machinery (once each)", quiet=quiet)
        start = perf_counter()
        await expired_runs(registry, owner="survivor", now=utcnow(), lease=timedelta(seconds=60))
        out[f"old lease scan of {RUNS:,} RUNNING runs"] = perf_counter() - start
        start = perf_counter()
        await registry.get_statuses(ids[:RUNS])
        out[f"old heartbeat status read of {RUNS:,} runs"] = perf_counter() - start
    finally:
        await registry.drop_schema()
        await registry.aclose()
    return out


@section(
    "leases",
    f"Leases: liveness with {RUNS:,} RUNNING runs on PostgreSQL, new vs per-run",
    available=_available,
)
def run(args: argparse.Namespace) -> SectionResult:
    url = getattr(args, "postgres_url", POSTGRES_URL)
    figures = asyncio.run(_measure(url, bool(getattr(args, "quiet", False))))
    rows = [{"operation": name, "ms": seconds * 1000} for name, seconds in figures.items()]
    result = SectionResult(
        tables=[
            Table([Column("operation", "operation"), Column("ms", "ms", "{:,.1f}".format)], rows)
        ],
        data={"seconds": figures},
    )
    check = figures["lease check, nobody dead"]
    result.checks.append(
        Check(
            "lease check under 10 ms with 100k RUNNING runs", check < 0.01, f"{check * 1000:.1f} ms"
        )
    )
    result.notes.append(
        f"{RUNS:,} RUNNING runs of a live manager and {DEAD_RUNS} of a dead one; medians of "
        f"{REPEAT} calls but the 'old' rows and the sweep (once each)."
    )
    return result
