"""Section ``durable``: durable runs that any replica can run, against pgqueuer, saq and arq.

Throughput: ``--durable-n`` no-op jobs (runtrack durable runs) bulk-enqueued by this
process and completed by (a) a worker in this process ("in-process") and (b) two worker
processes ("2 processes"), on PostgreSQL (runtrack, pgqueuer) and Redis (runtrack, saq,
arq). The workers start before the clock (a service whose workers are running); the clock
covers the enqueue and stops when the store records every job done, polled every
``POLL`` seconds from this process through a connection of its own. Every contender uses
the same concurrency ``C`` per worker, its own tables / schema / keys, and cleans up.

Latency: one idle worker process (registered, nothing to do); this process enqueues one
stamp job at a time and the time from the enqueue call's return to the job's start in the
worker is read from the worker's stdout (both sides read ``CLOCK_MONOTONIC``).

Logging: every contender runs with stdlib logging configured at INFO, as a service does
(``logging.basicConfig(level=INFO)``, to the null device); runtrack also with no logging
configured (its default, silent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

from _durable_kits import Kit, peer_kits
from _durable_runtrack import RuntrackKit
from _harness import Check, Column, SectionResult, Table, fmt_int, fmt_ratio, log, section
from _persist import (
    Contender,
    Tags,
    add_common_arguments,
    errors_of,
    missing,
    reachable,
    rows_for,
    run_all,
    time_limit,
    versions,
)
from core import DEFAULT_LOGGING, STDLIB_INFO, logging_setup

WORKER_SCRIPT = Path(__file__).resolve().parent / "_durable_worker.py"
#: How often the benchmark asks the store how many jobs are left.
POLL = 0.01
IN_PROCESS = "in-process"
TWO_PROCESSES = "2 processes"
PRODUCTION = "production"  # stdlib logging at INFO
DEFAULT = "default"  # nothing configured
#: Pause after each latency sample, so that the worker is idle again when the next comes.
LATENCY_GAP = 0.02
LATENCY_WARMUP = 10
TARGETS = {"pgqueuer": 5.0, "saq": 10.0}


# -- one measurement ----------------------------------------------------------------------------


@contextlib.contextmanager
def in_process_logging(setup: str) -> Iterator[None]:
    with logging_setup(STDLIB_INFO if setup == PRODUCTION else DEFAULT_LOGGING):
        yield


async def spawn_workers(
    procs: list[asyncio.subprocess.Process],
    kit: Kit,
    tag: str,
    count: int,
    concurrency: int,
    logging: str,
) -> None:
    """Start ``count`` worker processes of ``kit`` into ``procs``; return once all are ready."""
    for _ in range(count):
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER_SCRIPT),
                kit.name,
                kit_url(kit),
                tag,
                str(concurrency),
                logging,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"a {kit.name} worker failed to start (said {line!r})")


async def stop_workers(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.stdin is not None:
            proc.stdin.close()
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    failed = [proc.returncode for proc in procs if proc.returncode]
    if failed:
        raise RuntimeError(f"worker processes exited with {failed}")


def kit_url(kit: Kit) -> str:
    return str(kit.url)  # type: ignore[attr-defined]


async def throughput(
    kit: Kit,
    tags: Tags,
    n: int,
    concurrency: int,
    mode: str,
    logging: str,
    extras: list[dict[str, Any]],
) -> float:
    """Seconds from the start of the bulk enqueue to the last job recorded done."""
    tag = tags.next()
    await kit.setup(tag)
    procs: list[asyncio.subprocess.Process] = []
    local: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    try:
        if mode == IN_PROCESS:
            ready = asyncio.Event()
            local = asyncio.create_task(kit.worker(tag, concurrency, ready, stop))
            started = asyncio.create_task(ready.wait())
            await asyncio.wait([local, started], timeout=120, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if local.done():
                local.result()  # the worker failed: raise its error
            if not ready.is_set():
                raise RuntimeError(f"the {kit.name} worker did not start in 120 s")
        else:
            await spawn_workers(procs, kit, tag, 2, concurrency, logging)
        async with kit.client(tag) as client, asyncio.timeout(time_limit(n)):
            start = perf_counter()
            await client.enqueue(n)
            enqueued = perf_counter() - start
            polls = 0
            while await client.remaining():
                polls += 1
                if local is not None and local.done():
                    local.result()  # the worker failed: raise its error
                    raise RuntimeError(f"the {kit.name} worker stopped early")
                await asyncio.sleep(POLL)
            elapsed = perf_counter() - start
            await client.verify(n)
        extras.append({"enqueue_s": enqueued, "total_s": elapsed, "polls": polls})
        return elapsed
    finally:
        stop.set()
        if local is not None:
            await asyncio.gather(local, return_exceptions=True)
        try:
            await stop_workers(procs)
        finally:
            await kit.teardown(tag)


def measure(
    kit: Kit,
    tags: Tags,
    n: int,
    concurrency: int,
    mode: str,
    logging: str,
    extras: list[dict[str, Any]],
) -> Any:
    async def run() -> float:
        if mode == IN_PROCESS:
            with in_process_logging(logging):
                return await throughput(kit, tags, n, concurrency, mode, logging, extras)
        return await throughput(kit, tags, n, concurrency, mode, logging, extras)

    return run


# -- latency --------------------------------------------------------------------------------


async def latency(kit: Kit, tags: Tags, samples: int, concurrency: int) -> list[float]:
    """Milliseconds from each stamp job's enqueue returning to its start in an idle worker."""
    tag = tags.next()
    await kit.setup(tag)
    procs: list[asyncio.subprocess.Process] = []
    out: list[float] = []
    try:
        await spawn_workers(procs, kit, tag, 1, concurrency, PRODUCTION)
        stdout = procs[0].stdout
        assert stdout is not None
        async with kit.client(tag) as client:
            for index in range(LATENCY_WARMUP + samples):
                await asyncio.sleep(LATENCY_GAP)
                await client.enqueue_stamp(index)
                returned = time.monotonic_ns()
                line = await asyncio.wait_for(stdout.readline(), 30)
                marker, seen, started = line.split()
                if marker != b"S" or int(seen) != index:
                    raise RuntimeError(f"{kit.name}: unexpected line {line!r}")
                if index >= LATENCY_WARMUP:
                    out.append((int(started) - returned) / 1e6)
        return out
    finally:
        try:
            await stop_workers(procs)
        finally:
            await kit.teardown(tag)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- the section ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("durable")
    group.add_argument("--durable-n", type=int, default=10_000, help="durable no-op runs")
    group.add_argument("--durable-repeat", type=int, default=3, help="measurements each")
    group.add_argument(
        "--durable-concurrency", type=int, default=100, help="concurrency of every worker"
    )
    group.add_argument(
        "--durable-latency-samples", type=int, default=200, help="latency samples per contender"
    )
    group.add_argument(
        "--durable-stores", default="postgres,redis", help="stores: postgres, redis or both"
    )
    add_common_arguments(parser)  # --postgres-url, --redis-url


def stores(args: argparse.Namespace) -> dict[str, str]:
    """The stores to measure on, with their URLs, leaving out those that do not answer."""
    chosen = [s.strip() for s in args.durable_stores.split(",") if s.strip()]
    urls = {"postgres": args.postgres_url, "redis": args.redis_url}
    out = {}
    for store in chosen:
        if store not in urls:
            raise ValueError(f"--durable-stores: unknown store {store!r}")
        port = 5432 if store == "postgres" else 6379
        from persist_postgres import plain_dsn

        url = plain_dsn(urls[store]) if store == "postgres" else urls[store]
        if reachable(url, port, store) is None:
            out[store] = urls[store]
    return out


def available(args: argparse.Namespace) -> str | None:
    if not stores(args):
        return "neither PostgreSQL nor Redis answers"
    return None


def label(name: str, mode: str, logging: str) -> str:
    shown = "runtrack" if name.startswith("runtrack") else name
    suffix = ", no logging configured" if logging == DEFAULT else ""
    return f"{shown}, {mode}{suffix}"


def contenders_for(
    store: str, url: str, tags: Tags, args: argparse.Namespace, skipped: list[str]
) -> list[Contender]:
    n, conc = args.durable_n, args.durable_concurrency
    kits: list[tuple[Kit, str]] = [
        (RuntrackKit(store, url), PRODUCTION),
        (RuntrackKit(store, url), DEFAULT),
    ]
    modules = {"pgqueuer": ("pgqueuer",), "saq": ("saq",), "arq": ("arq",)}
    for kit in peer_kits(store, url, conc):
        gone = missing(*modules[kit.name])
        if gone:
            skipped.append(f"{kit.name}: not measured, not installed (pip install -e '.[bench]')")
            continue
        kits.append((kit, PRODUCTION))
    out = []
    for mode in (IN_PROCESS, TWO_PROCESSES):
        for kit, logging in kits:
            extras: list[dict[str, Any]] = []
            out.append(
                Contender(
                    label(kit.name, mode, logging),
                    "runtrack" if kit.name.startswith("runtrack") else "peer",
                    n,
                    measure=measure(kit, tags, n, conc, mode, logging, extras),
                    warmup=measure(kit, tags, min(n, 500), conc, mode, logging, []),
                    extras=extras,
                )
            )
            out[-1].note = mode
    return out


def throughput_table(store: str, rows: dict[str, dict[str, Any]], n: int) -> Table:
    shown = list(rows.values())
    for row in shown:
        mode = IN_PROCESS if IN_PROCESS in row["contender"] else TWO_PROCESSES
        ref = rows.get(label("runtrack", mode, PRODUCTION), {}).get("median")
        med = row.get("median")
        row["runtrack_vs"] = ref / med if ref and med else None
        extras = row.get("extras") or []
        row["enqueue_ms"] = (
            1000 * statistics.median(e["enqueue_s"] for e in extras) if extras else None
        )
    return Table(
        title=f"  {store}: {n:,} durable no-op runs, bulk enqueue -> all done",
        columns=[
            Column("contender", "contender"),
            Column("median runs/s", "median", fmt_int),
            Column("best runs/s", "best", fmt_int),
            Column("enqueue ms", "enqueue_ms", fmt_int),
            Column("runtrack / this", "runtrack_vs", fmt_ratio),
        ],
        rows=shown,
    )


def latency_rows(
    store: str, url: str, tags: Tags, args: argparse.Namespace, quiet: bool
) -> list[dict[str, Any]]:
    conc = args.durable_concurrency
    kits: list[Kit] = [RuntrackKit(store, url), *peer_kits(store, url, conc)]
    rows = []
    for kit in kits:
        name = "runtrack" if kit.name.startswith("runtrack") else kit.name
        log(f"  [durable] {store}: latency of {name}", quiet=quiet)
        row: dict[str, Any] = {"contender": name, "store": store}
        try:
            ms = asyncio.run(latency(kit, tags, args.durable_latency_samples, conc))
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        else:
            row |= {
                "p50": percentile(ms, 50),
                "p95": percentile(ms, 95),
                "p99": percentile(ms, 99),
                "max": max(ms),
                "samples": len(ms),
            }
        rows.append(row)
    return rows


def fmt_ms(value: float) -> str:
    return f"{value:.1f}"


@section(
    "durable",
    "Durable runs any replica can run: runtrack vs pgqueuer (PostgreSQL), saq, arq (Redis)",
    add_arguments=add_arguments,
    available=available,
)
def run(args: argparse.Namespace) -> SectionResult:
    result = SectionResult()
    skipped: list[str] = []
    all_rows: dict[str, Any] = {}
    latencies: list[dict[str, Any]] = []
    for store, url in stores(args).items():
        tags = Tags(f"d{store[0]}")
        contenders = contenders_for(store, url, tags, args, skipped)
        log(f"  [durable] {store}: throughput", quiet=args.quiet)
        samples = run_all(contenders, args.durable_repeat, quiet=args.quiet)
        rows = rows_for(contenders, samples)
        result.tables.append(throughput_table(store, rows, args.durable_n))
        result.errors += errors_of(rows)
        all_rows[store] = list(rows.values())
        for peer, factor in TARGETS.items():
            for mode in (IN_PROCESS, TWO_PROCESSES):
                other = label(peer, mode, PRODUCTION)
                if other in rows:
                    result.checks.append(
                        ratio_check(rows, label("runtrack", mode, PRODUCTION), other, factor)
                    )
        lat = latency_rows(store, url, tags, args, args.quiet)
        latencies += lat
        for row in lat:
            if row["contender"] == "runtrack":
                p99 = row.get("p99")
                result.checks.append(
                    Check(
                        f"runtrack submit -> RUNNING p99 < 50 ms on {store}",
                        p99 is not None and p99 < 50,
                        row.get("error") or f"{p99:.1f} ms",
                    )
                )
    result.tables.append(
        Table(
            title="\n  submit -> running on an idle worker process, ms",
            columns=[
                Column("contender", "contender"),
                Column("store", "store", align="<"),
                Column("p50", "p50", fmt_ms),
                Column("p95", "p95", fmt_ms),
                Column("p99", "p99", fmt_ms),
                Column("max", "max", fmt_ms),
            ],
            rows=latencies,
        )
    )
    result.errors += [f"latency {r['contender']}: {r['error']}" for r in latencies if "error" in r]
    result.notes += notes(args) + skipped
    result.data = {"throughput": all_rows, "latency": latencies, "skipped": skipped}
    return result


def ratio_check(rows: dict[str, dict[str, Any]], ref: str, other: str, factor: float) -> Check:
    from _persist import ratio_check as check

    return check(rows, ref, other, factor)


def notes(args: argparse.Namespace) -> list[str]:
    from _durable_kits import ARQ_POLL_DELAY, PGQUEUER_BATCH

    c = args.durable_concurrency
    return [
        "Workers start before the clock (untimed) and say when they take jobs; the clock "
        "covers the bulk enqueue from this process and stops when the store records every "
        f"job done (polled every {POLL * 1000:.0f} ms through a connection of its own). "
        "'2 processes': two worker processes, the enqueuer is this process.",
        f"runtrack: BackgroundTaskManager(registry, max_concurrency={c}) with "
        "@manager.task(name='noop'); enqueue = one noop.submit_many([((), {})] * n); done = "
        "count_runs() shows n COMPLETED.",
        f"pgqueuer: QueueManager(Queries(AsyncpgDriver(conn))) with run(batch_size="
        f"{PGQUEUER_BATCH}) (its tuning guide: raise batch_size for short jobs; default 10) "
        "and unlimited max_concurrent_tasks; enqueue = one Queries.enqueue([...] * n) "
        "(multi-row); done = its queue table is empty (a finished job's row moves to the "
        "log table), then n 'successful' log rows. Tables, function and trigger under a "
        "prefix of their own (DBSettings(prefix=...)); uninstalled after.",
        f"saq: Worker(queue, concurrency={c}) on RedisQueue(max_concurrent_ops={c}); arq: "
        f"Worker(max_jobs={c}, poll_delay={ARQ_POLL_DELAY}); neither has a bulk enqueue, so "
        f"{c} concurrent enqueue calls at a time; done = saq count('incomplete') == 0, arq "
        "queue sorted set empty (arq drops a job from it once its result is written).",
        "Logging: stdlib logging at INFO (a service's logging.basicConfig(level=INFO)) into "
        "the null device, in this process and in every worker process; runtrack also with "
        "nothing configured (its default, silent).",
        f"Latency: one idle worker process; {args.durable_latency_samples} stamp jobs counted, "
        f"one at a time after {LATENCY_WARMUP} uncounted, {LATENCY_GAP * 1000:.0f} ms apart; from "
        "the enqueue call's return (runtrack: fn.submit) to the job's first line in the "
        "worker, both read from CLOCK_MONOTONIC.",
        "Versions: " + versions("pgqueuer", "saq", "arq", "redis", "asyncpg"),
    ]
