"""Section ``cancel``: from `cancel_task` in one process to `CancelledError` in another.

The owner of the runs is a manager in a child process; the canceller is a manager in
this process sharing the registry. For each sample the child starts one run (a coroutine
sleeping), writes it, and says so; this process takes the time and calls
``cancel_task(run_id)``; the child takes the time as the run's coroutine sees
`CancelledError` and says so. Both times are ``time.monotonic()``, one clock for every
process on Linux. Samples are taken one after the other.

PostgreSQL (LISTEN/NOTIFY) and Redis (pub/sub) push the cancel to the owner; SQLite and
MariaDB have it polled every ``poll_interval`` (the default, 1 s): there each cancel waits
a random part of a second first, so that it falls anywhere between two polls (the figures
are about half the interval on average), and fewer samples are taken (``--cancel-poll-n``).
Both managers keep the default ``poll_interval``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from _harness import Check, Column, SectionResult, Table, log, section
from _persist import MARIADB_URL, POSTGRES_URL, REDIS_URL, missing, reachable

TARGET_P99 = 0.100

_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from runtrack import BackgroundTaskManager, RunStatus

    kind, url, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def registry():
        if kind == "redis":
            from runtrack.registry.redis import RedisRunRegistry
            return RedisRunRegistry(url, prefix=prefix)
        from runtrack.registry.sql import SQLRunRegistry
        return SQLRunRegistry(url, table_prefix=prefix)

    def say(**item):
        sys.stdout.write(json.dumps(item) + "\\n")
        sys.stdout.flush()

    async def main():
        reg = registry()
        manager = BackgroundTaskManager(reg, owner="owner")
        running = asyncio.Event()
        manager.add_listener(lambda e: e.status is RunStatus.RUNNING and running.set())

        async def body():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                say(cancelled=time.monotonic())
                raise

        async with manager:
            presence = manager._heartbeat.presence
            while presence is not None and presence._notifications is not None and (
                presence._notifications._listener is None
            ):
                await asyncio.sleep(0.01)
            for _ in range(n):
                running.clear()
                run = await manager.submit(body, name="cancel-me")
                await running.wait()
                await manager._writer.flush()
                say(ready=run.run_id)
                await manager.wait(run.run_id)
        await reg.aclose()

    asyncio.run(main())
    """
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cancel")
    group.add_argument("--cancel-n", type=int, default=200, help="samples on PostgreSQL, Redis")
    group.add_argument(
        "--cancel-poll-n", type=int, default=30, help="samples on SQLite, MariaDB (polled)"
    )


@asynccontextmanager
async def _registry(kind: str, url: str, prefix: str) -> AsyncIterator[Any]:
    if kind == "redis":
        from runtrack.registry.redis import RedisRunRegistry

        registry: Any = RedisRunRegistry(url, prefix=prefix)
        try:
            yield registry
        finally:
            keys = [k async for k in registry._client.scan_iter(match=f"{prefix}*", count=1000)]
            for i in range(0, len(keys), 1000):
                await registry._client.delete(*keys[i : i + 1000])
            await registry.aclose()
        return
    from runtrack.registry.sql import SQLRunRegistry

    registry = SQLRunRegistry(url, table_prefix=prefix)
    try:
        await registry.count_runs()  # the schema, before the child uses it
        yield registry
    finally:
        await registry.drop_schema()
        await registry.aclose()


async def _measure(kind: str, url: str, n: int, *, phase: float = 0.0) -> list[float]:
    from runtrack import BackgroundTaskManager

    prefix = f"bench_{uuid.uuid4().hex[:8]}_" if kind != "redis" else f"bench:{uuid.uuid4()}:"
    latencies: list[float] = []
    async with _registry(kind, url, prefix) as registry:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD, kind, url, prefix, str(n),
            stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert child.stdout is not None
        try:
            async with BackgroundTaskManager(registry, owner="canceller") as canceller:
                for _ in range(n):
                    ready = json.loads(await asyncio.wait_for(child.stdout.readline(), 120))
                    if phase:  # out of step with the owner's polls, which the last one ended
                        await asyncio.sleep(random.uniform(0, phase))
                    start = time.monotonic()
                    if not await canceller.cancel_task(ready["ready"]):
                        raise RuntimeError(f"cancel_task({ready['ready']!r}) found nothing")
                    done = json.loads(await asyncio.wait_for(child.stdout.readline(), 60))
                    latencies.append(done["cancelled"] - start)
            await asyncio.wait_for(child.wait(), 60)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    return latencies


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _backends(args: argparse.Namespace, tmp: str) -> list[tuple[str, str, str, int, str | None]]:
    """``(label, kind, url, samples, reason to skip)`` of each backend."""
    redis_url = getattr(args, "redis_url", REDIS_URL)
    pg_url = getattr(args, "postgres_url", POSTGRES_URL)
    if "+" not in pg_url.partition("://")[0]:
        pg_url = "postgresql+asyncpg://" + pg_url.partition("://")[2]
    maria_url = getattr(args, "mariadb_url", MARIADB_URL)
    sqlite_url = f"sqlite+aiosqlite:///{tmp}/cancel.db"
    redis_gone = "redis-py is not installed" if missing("redis") else None
    return [
        ("PostgreSQL (NOTIFY)", "sql", pg_url, args.cancel_n, reachable(pg_url, 5432, "PG")),
        ("Redis (pub/sub)", "redis", redis_url, args.cancel_n,
         redis_gone or reachable(redis_url, 6379, "Redis")),
        ("SQLite (polled)", "sql", sqlite_url, args.cancel_poll_n, None),
        ("MariaDB (polled)", "sql", maria_url, args.cancel_poll_n,
         reachable(maria_url, 3306, "MariaDB")),
    ]  # fmt: skip


@section(
    "cancel",
    "Cancel latency: cancel_task in one process to CancelledError in the owner's",
    add_arguments=add_arguments,
)
def run(args: argparse.Namespace) -> SectionResult:
    quiet = bool(getattr(args, "quiet", False))
    rows: list[dict[str, Any]] = []
    result = SectionResult()
    with tempfile.TemporaryDirectory(prefix="runtrack-bench-") as tmp:
        for label, kind, url, n, skip in _backends(args, tmp):
            if skip:
                rows.append({"backend": label, "error": skip})
                continue
            log(f"cancel: {label}, {n} samples", quiet=quiet)
            try:
                phase = 1.0 if "polled" in label else 0.0  # the default poll_interval
                latencies = asyncio.run(_measure(kind, url, n, phase=phase))
            except Exception as exc:
                rows.append({"backend": label, "error": f"{type(exc).__name__}: {exc}"})
                continue
            row: dict[str, Any] = {
                "backend": label,
                "n": len(latencies),
                "p50": _quantile(latencies, 0.50) * 1000,
                "p95": _quantile(latencies, 0.95) * 1000,
                "p99": _quantile(latencies, 0.99) * 1000,
                "max": max(latencies) * 1000,
                "mean": statistics.mean(latencies) * 1000,
            }
            rows.append(row)
            if "polled" not in label:
                result.checks.append(
                    Check(
                        f"{label}: p99 under {TARGET_P99 * 1000:.0f} ms",
                        row["p99"] < TARGET_P99 * 1000,
                        f"{row['p99']:.1f} ms",
                    )
                )
    ms = "{:,.1f}".format
    result.tables.append(
        Table(
            [
                Column("backend", "backend"),
                Column("n", "n"),
                Column("p50 ms", "p50", ms),
                Column("p95 ms", "p95", ms),
                Column("p99 ms", "p99", ms),
                Column("max ms", "max", ms),
            ],
            rows,
        )
    )
    result.notes.append(
        "One run cancelled at a time; the owner in a child process, default poll_interval "
        "(1 s) on both managers. PostgreSQL and Redis push the cancel; SQLite and MariaDB "
        "are polled (each cancel at a random point between two polls). On PostgreSQL the "
        "figure is mostly the commit of the cancel's transaction (NOTIFY is sent on commit)."
    )
    result.data = {"rows": rows}
    return result
