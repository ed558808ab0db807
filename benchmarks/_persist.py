"""Plumbing shared by the persistent-backend sections (redis, postgres, sqlite, mariadb).

Each of those sections times, side by side and round-robin (`_harness.interleaved`):

- runtrack on that store, a no-op run's full lifecycle (QUEUED, RUNNING, COMPLETED written
  through the manager's group-committed `BatchWriter`): ``start_task`` for each run, or
  ``submit`` from 100 concurrent callers, then ``wait_all()``;
- the peers on the same store (arq, saq, taskiq, procrastinate, fastapi-taskflow), each
  with its worker in this process at the same concurrency;
- the store's raw write limit: batched writes (a pipeline, a multi-row statement) and one
  write per round trip.

Every measurement uses its own keys, tables or queue, named with a tag unique to the
section run, and deletes them afterwards; the section ends with a sweep for anything
left with its tag.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
import importlib.util
import os
import socket
import statistics
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Protocol
from urllib.parse import urlsplit

from _harness import (
    Check,
    Column,
    Measurement,
    Samples,
    SectionResult,
    Table,
    fmt_int,
    fmt_ratio,
    interleaved,
    log,
)
from runtrack import BackgroundTaskManager, Run, RunRegistry, RunStatus

DEFAULT_N = 10_000
DEFAULT_REPEAT = 3
DEFAULT_CONCURRENCY = 100
#: Rows or commands per round trip in the raw batched-write measurements.
RAW_CHUNK = 1_000
#: Writes in the one-write-per-round-trip measurements (they are slow; a rate needs fewer).
RAW_SINGLE_MAX = 2_000

REDIS_URL = os.environ.get("RUNTRACK_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
POSTGRES_URL = (
    os.environ.get("RUNTRACK_TEST_POSTGRES_URL")
    or "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = (
    os.environ.get("RUNTRACK_TEST_MYSQL_URL") or "mysql+asyncmy://root@127.0.0.1:3306/test"
)

RUNTRACK_START = "runtrack start_task"
RUNTRACK_SUBMIT = "runtrack submit x{c}"

_REGISTERED: set[int] = set()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every persistent section shares (registered once per parser)."""
    if id(parser) in _REGISTERED:
        return
    _REGISTERED.add(id(parser))
    group = parser.add_argument_group("persistent backends (redis, postgres, sqlite, mariadb)")
    group.add_argument(
        "--persist-n",
        type=int,
        default=DEFAULT_N,
        help="no-op runs (jobs) per measurement in the persistent sections",
    )
    group.add_argument(
        "--persist-repeat",
        type=int,
        default=DEFAULT_REPEAT,
        help="measurements per contender in the persistent sections (round-robin)",
    )
    group.add_argument(
        "--persist-concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="runtrack max_concurrency, and each peer worker's concurrency",
    )
    group.add_argument("--redis-url", default=REDIS_URL, help="Redis for the redis section")
    group.add_argument(
        "--postgres-url", default=POSTGRES_URL, help="PostgreSQL for the postgres section"
    )
    group.add_argument(
        "--mariadb-url", default=MARIADB_URL, help="MariaDB/MySQL for the mariadb section"
    )


# -- availability -----------------------------------------------------------------------------


def reachable(url: str, default_port: int, what: str) -> str | None:
    """None when a TCP connection to the URL's host opens, else why not."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or default_port
    except ValueError:
        return f"malformed {what} URL"
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return None
    except OSError as exc:
        return f"no {what} at {host}:{port} ({exc.strerror or exc})"


def missing(*modules: str) -> list[str]:
    """The modules among ``modules`` that cannot be imported."""
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def versions(*dists: str) -> str:
    parts = []
    for dist in dists:
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


# -- tags and timeouts --------------------------------------------------------------------------


class Tags:
    """Unique names for one section run: ``<base><counter>``, all sharing ``base``."""

    def __init__(self, kind: str) -> None:
        self.base = f"rtb{kind}{uuid.uuid4().hex[:8]}x"
        self._counter = 0

    def next(self) -> str:
        self._counter += 1
        return f"{self.base}{self._counter}"


def time_limit(n: int) -> float:
    """Seconds a measurement of ``n`` runs may take before it is abandoned as hung."""
    return 60.0 + n / 40.0


# -- contenders -------------------------------------------------------------------------------


@dataclass
class Contender:
    """One line of a persistent section: a runtrack variant, a peer, or a raw-store figure."""

    label: str
    kind: str  # "runtrack", "peer" or "raw"
    ops: int
    measure: Measurement
    warmup: Measurement | None = None
    extras: list[dict[str, Any]] = field(default_factory=list)
    """Diagnostics recorded by each timed measurement (warm-ups record elsewhere)."""
    note: str = ""


def raw_contenders(
    tags: Tags,
    n: int,
    batched: tuple[str, Callable[[str, int], Coroutine[Any, Any, float]]],
    single: tuple[str, Callable[[str, int], Coroutine[Any, Any, float]]],
) -> list[Contender]:
    """The store's raw write limits: ``n`` rows written in bulk, and rows one at a time.

    Each callable takes a fresh tag (table or key prefix) and a row count.
    """
    batched_label, write_many = batched
    single_label, write_one = single
    single_n = min(n, RAW_SINGLE_MAX)
    return [
        Contender(
            batched_label,
            "raw",
            n,
            measure=lambda: write_many(tags.next(), n),
            warmup=lambda: write_many(tags.next(), min(n, 1_000)),
        ),
        Contender(single_label, "raw", single_n, measure=lambda: write_one(tags.next(), single_n)),
    ]


def rates(samples: Samples, ops: int) -> list[float]:
    return [ops / s for s in samples.seconds]


def run_all(contenders: Sequence[Contender], repeat: int, *, quiet: bool) -> dict[str, Samples]:
    """Warm every contender up once, then time them round-robin.

    A warm-up that fails is reported on stderr and left to fail again, visibly, when timed.
    """
    warmup = [_tolerant(c.label, c.warmup, quiet) for c in contenders if c.warmup is not None]
    samples = interleaved(
        [(c.label, c.measure) for c in contenders],
        n=1,
        repeat=repeat,
        warmup=warmup,
        quiet=quiet,
    )
    return samples


def _tolerant(label: str, measure: Measurement, quiet: bool) -> Measurement:
    async def warm() -> float:
        try:
            return await measure()
        except Exception as exc:
            log(f"  warm-up of {label} failed: {type(exc).__name__}: {exc}", quiet=quiet)
            return 0.0

    return warm


def rows_for(
    contenders: Sequence[Contender], samples: dict[str, Samples]
) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for c in contenders:
        s = samples[c.label]
        row: dict[str, Any] = {
            "contender": c.label,
            "kind": c.kind,
            "ops": c.ops,
            "seconds": s.seconds,
        }
        if s.error is not None:
            row["error"] = s.error
        if s.seconds:
            r = rates(s, c.ops)
            row |= {"median": statistics.median(r), "best": max(r), "rates": r}
        if c.extras:
            row["extras"] = c.extras
        rows[c.label] = row
    return rows


def lifecycle_table(rows: dict[str, dict[str, Any]], reference: str, n: int, title: str) -> Table:
    ref = rows.get(reference, {}).get("median")
    shown = [row for row in rows.values() if row["kind"] in {"runtrack", "peer"}]
    for row in shown:
        med = row.get("median")
        row["runtrack_vs"] = ref / med if ref and med else None
    return Table(
        title=title,
        columns=[
            Column("contender", "contender"),
            Column("median runs/s", "median", fmt_int),
            Column("best runs/s", "best", fmt_int),
            Column(f"{reference} / this", "runtrack_vs", fmt_ratio),
        ],
        rows=shown,
    )


def raw_table(rows: dict[str, dict[str, Any]], reference: str, title: str) -> Table:
    ref = rows.get(reference, {}).get("median")
    shown = [row for row in rows.values() if row["kind"] == "raw"]
    for row in shown:
        med = row.get("median")
        row["runs_per_op"] = ref / med if ref and med else None
    return Table(
        title=title,
        columns=[
            Column("raw store operation", "contender"),
            Column("ops timed", "ops", fmt_int),
            Column("median ops/s", "median", fmt_int),
            Column("best ops/s", "best", fmt_int),
            Column("runtrack runs per op", "runs_per_op", lambda v: f"{v:.3f}"),
        ],
        rows=shown,
    )


def ratio_check(
    rows: dict[str, dict[str, Any]], reference: str, other: str, factor: float
) -> Check:
    ref = rows.get(reference, {}).get("median")
    med = rows.get(other, {}).get("median")
    name = f"{reference} >= {factor:g}x {other}"
    if not ref or not med:
        why = rows.get(other, {}).get("error") or rows.get(reference, {}).get("error") or "no data"
        return Check(name, False, f"not measured: {why}")
    ratio = ref / med
    return Check(name, ratio >= factor, f"{ratio:.2f}x ({fmt_int(ref)} vs {fmt_int(med)} runs/s)")


def per_op_check(
    rows: dict[str, dict[str, Any]], reference: str, raw: str, target: float = 0.25
) -> Check:
    ref = rows.get(reference, {}).get("median")
    med = rows.get(raw, {}).get("median")
    name = f"{reference} >= {target:g} runs per raw write op ({raw})"
    if not ref or not med:
        return Check(name, False, "not measured")
    per = ref / med
    return Check(
        name,
        per >= target,
        f"{per:.3f} runs per op ({fmt_int(ref)} runs/s / {fmt_int(med)} ops/s)",
    )


def errors_of(rows: dict[str, dict[str, Any]]) -> list[str]:
    return [f"{row['contender']}: {row['error']}" for row in rows.values() if "error" in row]


# -- runtrack ---------------------------------------------------------------------------------


class BatchProbe:
    """Counts the manager's group commits by wrapping the registry's ``write_batch``.

    The wrapper is an instance attribute, so the `BatchWriter` (which looks the method up
    at each call) goes through it; it adds one ``perf_counter`` pair per batch.
    """

    def __init__(self, registry: Any) -> None:
        self.calls = 0
        self.writes = 0
        self.inserts = 0
        self.seconds = 0.0
        self.largest = 0
        original = registry.write_batch

        async def write_batch(writes: Sequence[Any]) -> list[bool]:
            started = perf_counter()
            try:
                return await original(writes)  # type: ignore[no-any-return]
            finally:
                self.seconds += perf_counter() - started
                self.calls += 1
                self.writes += len(writes)
                self.inserts += sum(1 for w in writes if w.run is not None)
                self.largest = max(self.largest, len(writes))

        registry.write_batch = write_batch

    def summary(self, n: int) -> dict[str, Any]:
        return {
            "batches": self.calls,
            "writes": self.writes,
            "writes_per_run": self.writes / n if n else None,
            "writes_per_batch": self.writes / self.calls if self.calls else None,
            "largest_batch": self.largest,
            "batch_ms": 1000 * self.seconds / self.calls if self.calls else None,
            "batch_busy_s": self.seconds,
        }


async def noop() -> None:
    return None


RegistryFactory = Callable[[str], RunRegistry]
Cleanup = Callable[[str], Awaitable[None]]


class Instrument(Protocol):
    """Watches one runtrack measurement (the SQLite section's visibility-lag sampler)."""

    def body(self) -> Coroutine[Any, Any, None]:
        """A no-op run body that lets the instrument count finished runs."""
        ...

    def start(self) -> None:
        """Called just before the clock starts."""
        ...

    async def finish(self) -> dict[str, Any]:
        """Called when wait_all() has returned: what the instrument saw."""
        ...


InstrumentFactory = Callable[[RunRegistry, str, int], Instrument]


async def runtrack_lifecycle(
    make_registry: RegistryFactory,
    cleanup: Cleanup,
    tags: Tags,
    n: int,
    concurrency: int,
    *,
    submit: bool,
    extras: list[dict[str, Any]],
    instrument: InstrumentFactory | None = None,
) -> float:
    """``n`` no-op runs through a manager on a fresh registry, timed to ``wait_all()``.

    The clock starts after the registry has connected and created its schema, and stops
    when ``wait_all()`` returns; a second registry instance (a fresh connection, as
    another process would have) must then find every run COMPLETED, before shutdown.
    """
    tag = tags.next()
    registry = make_registry(tag)
    probe = BatchProbe(registry)
    watcher = instrument(registry, tag, n) if instrument is not None else None
    make_body = watcher.body if watcher is not None else noop
    try:
        await registry.count_runs()  # connects and creates the schema: untimed
        manager = BackgroundTaskManager(registry, max_concurrency=concurrency)
        if watcher is not None:
            watcher.start()
        try:
            async with asyncio.timeout(time_limit(n)):
                start = perf_counter()
                if submit:
                    for first in range(0, n, concurrency):
                        await asyncio.gather(
                            *(
                                manager.submit(make_body, name="noop")
                                for _ in range(min(concurrency, n - first))
                            )
                        )
                else:
                    for _ in range(n):
                        manager.start_task(Run(name="noop"), make_body())
                enqueued = perf_counter() - start
                await manager.wait_all()
                elapsed = perf_counter() - start
            lag = await watcher.finish() if watcher is not None else None
            reader = make_registry(tag)
            try:
                counts = await reader.count_runs()
            finally:
                await reader.aclose()
        finally:
            await manager.shutdown()
        completed = counts.get(RunStatus.COMPLETED, 0)
        if completed != n or sum(counts.values()) != n:
            shown = {status.value: k for status, k in counts.items() if k}
            raise RuntimeError(
                f"after wait_all() a second reader found {shown} instead of {n} completed runs"
            )
        extras.append({"enqueue_s": enqueued, "total_s": elapsed, **probe.summary(n)})
        if lag is not None:
            extras[-1]["lag"] = lag
        return elapsed
    finally:
        await registry.aclose()
        await cleanup(tag)


def runtrack_contenders(
    make_registry: RegistryFactory,
    cleanup: Cleanup,
    tags: Tags,
    n: int,
    concurrency: int,
    *,
    instrument: InstrumentFactory | None = None,
) -> list[Contender]:
    """runtrack's two ways in: ``start_task`` for each run, and 100 concurrent ``submit``s."""
    out = []
    for submit in (False, True):
        label = RUNTRACK_SUBMIT.format(c=concurrency) if submit else RUNTRACK_START
        extras: list[dict[str, Any]] = []
        common = {"submit": submit, "instrument": instrument}
        out.append(
            Contender(
                label,
                "runtrack",
                n,
                measure=functools.partial(
                    runtrack_lifecycle,
                    make_registry,
                    cleanup,
                    tags,
                    n,
                    concurrency,
                    extras=extras,
                    **common,
                ),
                warmup=functools.partial(
                    runtrack_lifecycle,
                    make_registry,
                    cleanup,
                    tags,
                    min(n, 500),
                    concurrency,
                    extras=[],
                    **common,
                ),
                extras=extras,
            )
        )
    return out


def runtrack_details(rows: dict[str, dict[str, Any]]) -> list[str]:
    """One line per runtrack variant: the enqueue phase and the group commits."""
    lines = []
    for row in rows.values():
        extras = row.get("extras") or []
        if row["kind"] != "runtrack" or not extras:
            continue

        def mean(key: str, extras: list[dict[str, Any]] = extras) -> float:
            values = [e[key] for e in extras if e.get(key) is not None]
            return statistics.mean(values) if values else float("nan")

        lines.append(
            f"  {row['contender']}: enqueue phase {mean('enqueue_s'):.2f}s of "
            f"{mean('total_s'):.2f}s; {mean('batches'):.0f} write_batch calls, "
            f"{mean('writes_per_batch'):.0f} writes per batch (largest "
            f"{max(e['largest_batch'] for e in extras)}), {mean('writes_per_run'):.2f} "
            f"writes per run, {mean('batch_ms'):.1f} ms per batch, registry busy "
            f"{mean('batch_busy_s'):.2f}s"
        )
    return lines


def peer_details(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows.values():
        extras = row.get("extras") or []
        if row["kind"] != "peer" or not extras:
            continue
        enq = [e["enqueue_s"] for e in extras if "enqueue_s" in e]
        tot = [e["total_s"] for e in extras if "total_s" in e]
        if enq and tot:
            lines.append(
                f"  {row['contender']}: enqueue phase {statistics.mean(enq):.2f}s of "
                f"{statistics.mean(tot):.2f}s"
            )
    return lines


COMMON_NOTES = [
    "Every measurement runs in a fresh event loop after gc.collect(), round-robin with the "
    "others; a warm-up round (500 runs, not counted) comes first. Figures are medians.",
    "runtrack: BackgroundTaskManager(registry, max_concurrency=C); the clock starts once the "
    "registry has connected and created its tables, and stops when wait_all() returns; a "
    "second registry instance must then read every run as COMPLETED (checked before "
    "shutdown, untimed). 'start_task' calls manager.start_task(Run(name='noop'), noop()) "
    "for each run; 'submit xC' awaits manager.submit(noop) from C concurrent callers at a "
    "time (each returns once its QUEUED record is durable).",
    "runtrack writes QUEUED, RUNNING and COMPLETED through its group-committing BatchWriter: "
    "writes of many runs share one write_batch call (one transaction / one Lua script), and a "
    "run's writes that fall in one window coalesce into one; 'writes per run' below says how "
    "many write_batch entries each run cost.",
    "Raw limits: the store alone, no library; batched = "
    f"{RAW_CHUNK:,} rows or commands per round trip; single = one write per round trip, "
    f"timed over min(n, {RAW_SINGLE_MAX:,}) writes. 'runtrack runs per op' = runtrack "
    "start_task runs/s / that op's rate.",
    "The machine was shared with other processes (tests, servers) while measuring: compare "
    "rows of one report, not reports.",
]


def common_data(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "n": args.persist_n,
        "repeat": args.persist_repeat,
        "concurrency": args.persist_concurrency,
        "raw_chunk": RAW_CHUNK,
        "raw_single_max": RAW_SINGLE_MAX,
    }


def assemble(
    args: argparse.Namespace,
    contenders: Sequence[Contender],
    samples: dict[str, Samples],
    *,
    title: str,
    checks: Callable[[dict[str, dict[str, Any]]], list[Check]],
    notes: Sequence[str],
    details: Sequence[str] = (),
    data: dict[str, Any] | None = None,
    extra_tables: Callable[[dict[str, dict[str, Any]]], list[Table]] | None = None,
) -> SectionResult:
    rows = rows_for(contenders, samples)
    n = args.persist_n
    tables = [
        lifecycle_table(rows, RUNTRACK_START, n, f"  {title}: {n:,} no-op runs, enqueue -> done"),
        raw_table(rows, RUNTRACK_START, "\n  raw write limit of the store"),
        *(extra_tables(rows) if extra_tables is not None else []),
    ]
    return SectionResult(
        tables=tables,
        checks=checks(rows),
        notes=[*notes, *COMMON_NOTES],
        details=[*runtrack_details(rows), *peer_details(rows), *details],
        data={**common_data(args), **(data or {}), "rows": list(rows.values())},
        errors=errors_of(rows),
    )


# -- raw-store rows ---------------------------------------------------------------------------

RAW_COLUMNS = (
    "run_id",
    "name",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "parameters",
    "tags",
    "priority",
    "attempt",
    "max_attempts",
    "owner",
)


def raw_row(i: int, tag: str) -> tuple[Any, ...]:
    """A run-sized record: the fields runtrack stores for a finished no-op run."""
    now = 1_750_000_000_000_000 + i
    return (
        f"{tag}-{i:08d}-{uuid.uuid4().hex}",
        "noop",
        "completed",
        now,
        now + 10,
        now + 20,
        "{}",
        "{}",
        0,
        1,
        1,
        "bench-host:1234:abcdef",
    )


def chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


async def gather_in_waves(make: Callable[[], Awaitable[Any]], n: int, width: int) -> None:
    """``n`` calls of ``make``, ``width`` at a time (as ``width`` concurrent requests would)."""
    for first in range(0, n, width):
        await asyncio.gather(*(make() for _ in range(min(width, n - first))))
