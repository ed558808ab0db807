"""Section ``memory``: bytes per finished run and per waiting run, measured with tracemalloc.

Each measurement runs in a fresh event loop with tracemalloc tracing only that loop. The
figure is the growth of traced memory (after ``gc.collect()``) between a baseline taken
once the manager/scheduler exists and a point where the N runs are held, divided by N.
tracemalloc counts what Python allocates, not the process RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiojobs

from _harness import (
    REPO_ROOT,
    Check,
    Column,
    SectionResult,
    Table,
    fmt_bytes,
    log,
    section,
)
from runtrack import BackgroundTaskManager, Run, RunStatus

TARGET_BYTES = 1024
WARMUP_RUNS = 64


async def noop() -> None:
    return None


async def blocker(event: asyncio.Event) -> None:
    await event.wait()


@dataclass
class Growth:
    """Traced memory growth over one measurement."""

    n: int
    grown: int
    top: list[dict[str, Any]] = field(default_factory=list)

    @property
    def per_run(self) -> float:
        return self.grown / self.n


def _site(filename: str, lineno: int) -> str:
    path = Path(filename)
    for root in (REPO_ROOT / "src", REPO_ROOT):
        if path.is_relative_to(root):
            return f"{path.relative_to(root)}:{lineno}"
    parts = path.parts
    if "site-packages" in parts:
        return f"{Path(*parts[parts.index('site-packages') + 1 :])}:{lineno}"
    if len(parts) >= 2 and parts[-2].startswith("python3"):
        return f"<stdlib>/{parts[-1]}:{lineno}"
    return f"{filename}:{lineno}"


class Probe:
    """Measures traced-memory growth from `baseline` to `measure`, and where it went.

    `measure` stops tracing: one probe per traced measurement.
    """

    _FILTERS = (tracemalloc.Filter(False, tracemalloc.__file__),)

    def __init__(self, n: int, top: int) -> None:
        self.n = n
        self.top = top
        self._before = 0
        self._snapshot: tracemalloc.Snapshot | None = None

    def baseline(self) -> None:
        gc.collect()
        self._before = tracemalloc.get_traced_memory()[0]
        if self.top:
            self._snapshot = tracemalloc.take_snapshot().filter_traces(self._FILTERS)

    def measure(self) -> Growth:
        gc.collect()
        growth = Growth(self.n, tracemalloc.get_traced_memory()[0] - self._before)
        if self._snapshot is not None:
            after = tracemalloc.take_snapshot().filter_traces(self._FILTERS)
            stats = after.compare_to(self._snapshot, "lineno")
            self._snapshot = None
            for stat in stats[: self.top]:
                frame = stat.traceback[0]
                growth.top.append(
                    {
                        "site": _site(frame.filename, frame.lineno),
                        "bytes_per_run": stat.size_diff / self.n,
                        "blocks_per_run": stat.count_diff / self.n,
                    }
                )
        tracemalloc.stop()  # the clean-up after the measurement need not be traced (slow)
        return growth


def traced(measure: Callable[[], Coroutine[Any, Any, Growth]]) -> Growth:
    """Run one measurement in a fresh event loop, traced by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        return asyncio.run(measure())
    finally:
        tracemalloc.stop()


async def _until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(1_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise RuntimeError(f"timed out waiting until {what}")


# -- measurements -----------------------------------------------------------------------------


async def runtrack_finished(n: int, top: int) -> Growth:
    """N finished no-op runs kept in the default in-memory registry."""
    probe = Probe(n, top)
    manager = BackgroundTaskManager()
    try:
        for _ in range(WARMUP_RUNS):  # one-time costs (executor, logger) are not per run
            manager.start_task(Run(name="noop"), noop())
        await manager.wait_all()
        probe.baseline()
        for _ in range(n):
            manager.start_task(Run(name="noop"), noop())
        await manager.wait_all()
        growth = probe.measure()  # the manager and its registry are alive here
        counts = await manager.registry.count_runs()
    finally:
        await manager.shutdown()
    if counts.get(RunStatus.COMPLETED) != n + WARMUP_RUNS:
        raise RuntimeError(f"expected {n + WARMUP_RUNS} completed runs, found {dict(counts)}")
    return growth


async def runtrack_waiting(n: int, top: int) -> Growth:
    """N runs waiting for admission behind one blocked run (max_concurrency=1)."""
    probe = Probe(n, top)
    manager = BackgroundTaskManager(max_concurrency=1)
    event = asyncio.Event()
    try:
        for _ in range(WARMUP_RUNS):
            manager.start_task(Run(name="noop"), noop())
        await manager.wait_all()
        manager.start_task(Run(name="blocker"), blocker(event))
        await _until(lambda: manager.stats().running == 1, "the blocker runs")
        probe.baseline()
        for _ in range(n):
            manager.start_task(Run(name="noop"), noop())
        growth = probe.measure()
        queued = manager.stats().queued
        event.set()
        await manager.wait_all()
        counts = await manager.registry.count_runs()
    finally:
        event.set()
        await manager.shutdown()
    if queued != n:
        raise RuntimeError(f"expected {n} queued runs while measuring, found {queued}")
    if counts.get(RunStatus.COMPLETED) != n + WARMUP_RUNS + 1:
        raise RuntimeError(f"expected {n + WARMUP_RUNS + 1} completed, found {dict(counts)}")
    return growth


async def aiojobs_pending(n: int, top: int) -> Growth:
    """N aiojobs jobs pending behind one blocked job (limit=1)."""
    probe = Probe(n, top)
    scheduler = aiojobs.Scheduler(limit=1, pending_limit=n, wait_timeout=None)
    event = asyncio.Event()
    try:
        await scheduler.spawn(blocker(event))
        await asyncio.sleep(0)
        probe.baseline()
        for _ in range(n):
            await scheduler.spawn(noop())
        growth = probe.measure()
        pending = scheduler.pending_count
        event.set()
    finally:
        event.set()
        await scheduler.wait_and_close()
    if pending != n:
        raise RuntimeError(f"expected {n} pending jobs while measuring, found {pending}")
    return growth


async def bare_coroutines(n: int, top: int) -> Growth:
    """N ``noop()`` coroutine objects (the list holding them is allocated before)."""
    probe = Probe(n, top)
    coros: list[Coroutine[Any, Any, None] | None] = [None] * n
    probe.baseline()
    for i in range(n):
        coros[i] = noop()
    growth = probe.measure()
    for coro in coros:
        if coro is not None:
            coro.close()  # never awaited: close them quietly
    return growth


async def _gated(semaphore: asyncio.Semaphore, coro: Coroutine[Any, Any, None]) -> None:
    async with semaphore:
        await coro


async def raw_semaphore_tasks(n: int, top: int) -> Growth:
    """N Tasks blocked on an ``asyncio.Semaphore(1)``: the naive way to cap concurrency."""
    probe = Probe(n, top)
    semaphore = asyncio.Semaphore(1)
    await semaphore.acquire()
    tasks: list[asyncio.Task[None] | None] = [None] * n
    probe.baseline()
    for i in range(n):
        tasks[i] = asyncio.create_task(_gated(semaphore, noop()))
    await asyncio.sleep(0)  # each task runs up to the semaphore and waits there
    growth = probe.measure()
    semaphore.release()
    await asyncio.gather(*(t for t in tasks if t is not None))
    return growth


# -- the section --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    fn: Callable[[int, int], Coroutine[Any, Any, Growth]]
    includes_coroutine: bool
    target: int | None = None
    show_top: bool = False


MEASURES = [
    Measure(
        "runtrack_finished",
        "runtrack: FINISHED run kept in memory registry",
        runtrack_finished,
        includes_coroutine=False,
        target=TARGET_BYTES,
        show_top=True,
    ),
    Measure(
        "runtrack_waiting",
        "runtrack: WAITING run (max_concurrency=1)",
        runtrack_waiting,
        includes_coroutine=True,
        target=TARGET_BYTES,
        show_top=True,
    ),
    Measure(
        "aiojobs_pending",
        "aiojobs: pending job (limit=1)",
        aiojobs_pending,
        includes_coroutine=True,
    ),
    Measure(
        "raw_semaphore_task",
        "ref: asyncio Task waiting on Semaphore(1)",
        raw_semaphore_tasks,
        includes_coroutine=True,
    ),
    Measure(
        "coroutine",
        "ref: bare noop() coroutine object",
        bare_coroutines,
        includes_coroutine=True,
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory")
    group.add_argument(
        "--mem-n", type=int, default=20_000, help="runs per memory measurement (default 20000)"
    )
    group.add_argument(
        "--mem-top",
        type=int,
        default=4,
        help="allocation sites to show for runtrack's rows (0: none; default 4)",
    )


@section("memory", "Memory per run (tracemalloc)", add_arguments=add_arguments)
def run(args: argparse.Namespace) -> SectionResult:
    n: int = args.mem_n
    top: int = args.mem_top
    growths: dict[str, Growth] = {}
    errors: dict[str, str] = {}
    for m in MEASURES:
        started = time.perf_counter()
        try:
            growths[m.key] = traced(functools.partial(m.fn, n, top if m.show_top else 0))
        except Exception as exc:
            errors[m.key] = f"{type(exc).__name__}: {exc}"
        outcome = errors[m.key] if m.key in errors else f"{growths[m.key].per_run:,.0f} B/run"
        log(f"  {m.key}: {outcome} ({time.perf_counter() - started:.1f}s)", quiet=args.quiet)

    coro = growths.get("coroutine")
    rows: list[dict[str, Any]] = []
    for m in MEASURES:
        row: dict[str, Any] = {"key": m.key, "measurement": m.label, "n": n, "target": m.target}
        g = growths.get(m.key)
        if g is None:
            row["error"] = errors[m.key]
        else:
            row |= {"bytes_per_run": g.per_run, "bytes_total": g.grown, "top_sites": g.top}
            if m.includes_coroutine and coro is not None and m.key != "coroutine":
                row["excl_coroutine"] = g.per_run - coro.per_run
        rows.append(row)

    table = Table(
        columns=[
            Column("measurement", "measurement"),
            Column("N", "n", lambda v: f"{v:,}"),
            Column("bytes/run", "bytes_per_run", fmt_bytes),
            Column("minus coroutine", "excl_coroutine", fmt_bytes),
            Column("target", "target", lambda v: f"<= {v:,}"),
        ],
        rows=rows,
    )

    checks = []
    for m in MEASURES:
        if m.target is None:
            continue
        g = growths.get(m.key)
        checks.append(
            Check(
                f"{m.label} <= {m.target:,} bytes/run",
                g is not None and g.per_run <= m.target,
                f"{g.per_run:,.0f} bytes/run" if g is not None else errors.get(m.key, "no data"),
            )
        )

    notes = [
        "bytes/run = growth of tracemalloc's traced memory (after gc.collect()) while N runs "
        "are held, divided by N; a warm-up of "
        f"{WARMUP_RUNS} runs before the baseline keeps one-time costs out of runtrack's rows.",
        "FINISHED: the manager and its InMemoryRunRegistry stay alive while measuring; the "
        "figure is what the registry (and anything else) keeps per finished run.",
        "WAITING rows include the caller's own noop() coroutine object (the caller created "
        "it; every library must hold it until it runs); 'minus coroutine' subtracts the "
        "bare-coroutine figure to show the library's own share. runtrack's WAITING figure "
        "also includes the run's QUEUED record in the registry.",
        "The Semaphore reference holds a Task, a wrapper coroutine, the noop() coroutine and "
        "a waiter future per run.",
    ]
    details: list[str] = []
    for row in rows:
        if row.get("top_sites"):
            details.append(f"  where {row['key']} goes (top allocation sites, bytes/run):")
            details.extend(
                f"    {site['bytes_per_run']:>8,.1f}  {site['site']}" for site in row["top_sites"]
            )

    return SectionResult(
        tables=[table],
        checks=checks,
        notes=notes,
        details=details,
        data={"n": n, "target_bytes": TARGET_BYTES, "warmup_runs": WARMUP_RUNS},
        errors=[f"{key}: {msg}" for key, msg in errors.items()],
    )
