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
import functools
import statistics
from typing import Any

from _durable_kits import Kit, peer_kits
from _durable_measure import (
    DEFAULT,
    IN_PROCESS,
    LATENCY_GAP,
    LATENCY_WARMUP,
    POLL,
    PRODUCTION,
    TWO_PROCESSES,
    latency,
    percentile,
    throughput,
)
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
    versions,
)

TARGETS = {"pgqueuer": 5.0, "saq": 10.0}


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
                    measure=functools.partial(
                        throughput, kit, tags, n, conc, mode, logging, extras
                    ),
                    warmup=functools.partial(
                        throughput, kit, tags, min(n, 500), conc, mode, logging, []
                    ),
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
