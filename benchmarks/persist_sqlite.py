"""Section ``sqlite``: runtrack+SQLite against fastapi-taskflow's SQLite persistence.

Both run in this process on a SQLite file in a temporary directory, in WAL mode.

fastapi-taskflow keeps live tasks in memory (``TaskStore``); a finished task reaches its
SQLite backend through ``flush_one`` right after SUCCESS (one transaction per task, in a
4-thread pool) and the periodic snapshot (``snapshot_interval``, default 60 s); PENDING
and RUNNING are never written while the process lives. runtrack writes QUEUED, RUNNING and
COMPLETED through its group-committing writer, and ``wait_all()`` returns only once the
terminal records are written.

So besides throughput the section measures how far each store trails the library: a
sampler reads the file every 50 ms with a separate ``sqlite3`` connection and records how
many runs had finished (their coroutine returned) but were not yet visible as finished in
the file; when the library reports everything done (runtrack: ``wait_all()`` returned;
fastapi-taskflow: every task SUCCESS in its store) it records how many were still missing
and how long until all were visible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import shutil
import sqlite3
import statistics
import tempfile
from pathlib import Path
from time import perf_counter
from typing import Any

from _harness import Check, Column, SectionResult, Table, fmt_int, section
from _persist import (
    RAW_COLUMNS,
    RUNTRACK_START,
    Contender,
    Tags,
    add_common_arguments,
    assemble,
    missing,
    per_op_check,
    raw_contenders,
    raw_row,
    run_all,
    runtrack_contenders,
    time_limit,
    versions,
)

TASKFLOW = "fastapi-taskflow"
RAW_MANY = "executemany, one transaction"
RAW_SINGLE = "INSERT + COMMIT per row"
SAMPLE_EVERY = 0.05
#: How long to wait for a store to show every finished run before giving up.
VISIBLE_WITHIN = 90.0


class LagWatch:
    """Counts finished runs and measures how many the SQLite file does not show yet."""

    def __init__(self, path: Path, count_sql: str, n: int) -> None:
        self.path = path
        self.count_sql = count_sql
        self.n = n
        self.finished = 0
        self.all_finished = asyncio.Event()
        self.behind: list[int] = []
        self.last_at = 0.0
        self.behind_at_last = 0
        self._reader: sqlite3.Connection | None = None
        self._sampler: asyncio.Task[None] | None = None

    async def body(self) -> None:
        """A no-op run that counts itself finished."""
        self.finished += 1
        if self.finished >= self.n:
            # The last run is ending: how many of the others are not in the file yet?
            self.last_at = perf_counter()
            self.behind_at_last = max(0, self.n - 1 - self.visible())
            self.all_finished.set()

    def visible(self) -> int:
        if self._reader is None:
            self._reader = sqlite3.connect(self.path, timeout=30)
        try:
            return int(self._reader.execute(self.count_sql).fetchone()[0])
        except sqlite3.OperationalError:  # the table does not exist yet
            return 0

    def start(self) -> None:
        self._sampler = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            finished = self.finished
            self.behind.append(max(0, finished - self.visible()))

    async def finish(self) -> dict[str, Any]:
        """The library says all runs are done: how far behind is its file?"""
        done_at = perf_counter()
        at_done = self.n - self.visible()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        all_in: float | None = None
        while True:
            if self.visible() >= self.n:
                all_in = perf_counter()
                break
            if perf_counter() - done_at > VISIBLE_WITHIN:
                break
            await asyncio.sleep(0.005)
        if self._reader is not None:
            self._reader.close()
        return {
            "behind_max": max(self.behind, default=0),
            "behind_mean": statistics.mean(self.behind) if self.behind else 0.0,
            "samples": len(self.behind),
            "behind_at_last": self.behind_at_last,
            "behind_at_done": at_done,
            "done_after_last_s": done_at - self.last_at,
            "visible_after_last_s": None if all_in is None else all_in - self.last_at,
        }


# -- fastapi-taskflow -------------------------------------------------------------------------


async def run_taskflow(
    directory: Path, tags: Tags, n: int, concurrency: int, extras: list[dict[str, Any]]
) -> float:
    from fastapi_taskflow import QueueConfig, TaskManager
    from fastapi_taskflow.models import TaskStatus
    from fastapi_taskflow.wrapper import ManagedBackgroundTasks

    path = directory / f"{tags.next()}-taskflow.db"
    watch = LagWatch(path, "SELECT count(*) FROM task_snapshots WHERE status = 'success'", n)
    # queues= turns on its in-process queue with a concurrency limit (a semaphore);
    # snapshot_interval keeps its default (60 s).
    manager = TaskManager(
        snapshot_db=str(path), queues={"default": QueueConfig(concurrency=concurrency)}
    )

    async def noop() -> None:
        await watch.body()

    manager.task(name="noop")(noop)
    await manager.startup()
    try:
        tasks = ManagedBackgroundTasks(manager)
        watch.start()
        async with asyncio.timeout(time_limit(n)):
            start = perf_counter()
            ids = [tasks.add_task(noop) for _ in range(n)]
            enqueued = perf_counter() - start
            await watch.all_finished.wait()
            while not all(  # noqa: ASYNC110 - it offers nothing to wait on
                record.status is TaskStatus.SUCCESS for record in manager.store.list()
            ):
                await asyncio.sleep(0.001)
            elapsed = perf_counter() - start
        lag = await watch.finish()
        statuses = {manager.store.get(task_id).status for task_id in ids}  # type: ignore[union-attr]
        if statuses != {TaskStatus.SUCCESS} or len(set(ids)) != n:
            raise RuntimeError(f"fastapi-taskflow ended with statuses {statuses}")
        if lag["visible_after_last_s"] is None:
            raise RuntimeError(
                f"fastapi-taskflow's SQLite file still lacked {lag['behind_at_done']} of {n} "
                f"finished tasks {VISIBLE_WITHIN:g}s after they finished"
            )
        extras.append({"enqueue_s": enqueued, "total_s": elapsed, "lag": lag})
        return elapsed
    finally:
        await manager.shutdown()
        _unlink(path)


# -- the raw write limit ----------------------------------------------------------------------

RAW_DDL = (
    "CREATE TABLE raw (run_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, "
    "created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER, "
    "parameters TEXT NOT NULL, tags TEXT NOT NULL, priority INTEGER NOT NULL, "
    "attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL, owner TEXT)"
)
RAW_INSERT = f"INSERT INTO raw ({', '.join(RAW_COLUMNS)}) VALUES ({', '.join('?' * 12)})"


def _raw_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT
    conn.execute("PRAGMA journal_mode = WAL")  # synchronous stays at its default, as runtrack's
    conn.execute(RAW_DDL)
    return conn


async def raw_executemany(directory: Path, tag: str, n: int) -> float:
    path = directory / f"{tag}-raw.db"
    rows = [raw_row(i, tag) for i in range(n)]
    conn = _raw_db(path)
    try:
        start = perf_counter()
        conn.execute("BEGIN")
        conn.executemany(RAW_INSERT, rows)
        conn.execute("COMMIT")
        return perf_counter() - start
    finally:
        conn.close()
        _unlink(path)


async def raw_commit_per_row(directory: Path, tag: str, n: int) -> float:
    path = directory / f"{tag}-raw.db"
    rows = [raw_row(i, tag) for i in range(n)]
    conn = _raw_db(path)
    try:
        start = perf_counter()
        for row in rows:
            conn.execute("BEGIN")
            conn.execute(RAW_INSERT, row)
            conn.execute("COMMIT")
        return perf_counter() - start
    finally:
        conn.close()
        _unlink(path)


def _unlink(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# -- the section ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def available(args: argparse.Namespace) -> str | None:
    gone = missing("aiosqlite", "sqlalchemy")
    return f"{', '.join(gone)} missing: pip install -e '.[sql]'" if gone else None


def lag_table(rows: dict[str, dict[str, Any]]) -> list[Table]:
    shown = []
    for row in rows.values():
        lags = [e["lag"] for e in row.get("extras") or [] if "lag" in e]
        if not lags:
            continue
        after = [lag["visible_after_last_s"] for lag in lags]
        shown.append(
            {
                "contender": row["contender"],
                "behind_max": max(lag["behind_max"] for lag in lags),
                "behind_mean": statistics.mean(lag["behind_mean"] for lag in lags),
                "behind_at_last": statistics.median(lag["behind_at_last"] for lag in lags),
                "behind_at_done": max(lag["behind_at_done"] for lag in lags),
                "visible_after_ms": None
                if None in after
                else 1000 * statistics.median(a for a in after if a is not None),
            }
        )
    if not shown:
        return []
    return [
        Table(
            title="\n  finished runs not yet in the SQLite file (medians; max/mean: sampled "
            f"every {SAMPLE_EVERY * 1000:.0f} ms, all measurements)",
            columns=[
                Column("contender", "contender"),
                Column("during run: max", "behind_max", fmt_int),
                Column("mean", "behind_mean", fmt_int),
                Column("as the last run ends", "behind_at_last", fmt_int),
                Column("when 'done'", "behind_at_done", fmt_int),
                Column("all in file, ms after last run", "visible_after_ms", lambda v: f"{v:.0f}"),
            ],
            rows=shown,
        )
    ]


@section(
    "sqlite",
    "SQLite: runtrack+SQLite vs fastapi-taskflow; raw executemany limit",
    add_arguments=add_arguments,
    available=available,
)
def run(args: argparse.Namespace) -> SectionResult:
    from runtrack.registry.sql import SQLRunRegistry

    n: int = args.persist_n
    conc: int = args.persist_concurrency
    tags = Tags("s")
    directory = Path(tempfile.mkdtemp(prefix="runtrack-bench-"))

    def db(tag: str) -> Path:
        return directory / f"{tag}.db"

    def make_registry(tag: str) -> SQLRunRegistry:
        return SQLRunRegistry(f"sqlite+aiosqlite:///{db(tag)}", table_prefix=f"{tag}_")

    async def cleanup(tag: str) -> None:
        _unlink(db(tag))

    def instrument(registry: Any, tag: str, n: int) -> LagWatch:
        return LagWatch(db(tag), f"SELECT count(*) FROM {tag}_runs WHERE status = 'completed'", n)

    contenders = runtrack_contenders(make_registry, cleanup, tags, n, conc, instrument=instrument)
    skipped: list[str] = []
    if missing("fastapi_taskflow"):
        skipped.append(f"{TASKFLOW}: not measured, not installed (pip install -e '.[bench]')")
    else:
        extras: list[dict[str, Any]] = []
        contenders.append(
            Contender(
                TASKFLOW,
                "peer",
                n,
                measure=lambda: run_taskflow(directory, tags, n, conc, extras),
                warmup=lambda: run_taskflow(directory, tags, min(n, 500), conc, []),
                extras=extras,
            )
        )
    contenders += raw_contenders(
        tags,
        n,
        (RAW_MANY, functools.partial(raw_executemany, directory)),
        (RAW_SINGLE, functools.partial(raw_commit_per_row, directory)),
    )
    try:
        samples = run_all(contenders, args.persist_repeat, quiet=args.quiet)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    def checks(rows: dict[str, dict[str, Any]]) -> list[Check]:
        out = []
        rt, peer = rows.get(RUNTRACK_START, {}), rows.get(TASKFLOW, {})
        rt_lags = [e["lag"] for e in rt.get("extras") or [] if "lag" in e]
        behind = max((lag["behind_at_done"] for lag in rt_lags), default=None)
        if rt.get("median") and peer.get("median"):
            ratio = rt["median"] / peer["median"]
            out.append(
                Check(
                    f"{RUNTRACK_START} ahead of {TASKFLOW}, all records written at wait_all()",
                    ratio > 1 and behind == 0,
                    f"{ratio:.2f}x ({fmt_int(rt['median'])} vs {fmt_int(peer['median'])} "
                    f"runs/s); runtrack runs missing from the file when wait_all() "
                    f"returned: {behind} (QUEUED/RUNNING writes coalesce: see writes per run)",
                )
            )
        else:
            out.append(
                Check(
                    f"{RUNTRACK_START} ahead of {TASKFLOW}",
                    False,
                    "not measured: " + (peer.get("error") or rt.get("error") or "no data"),
                )
            )
        out.append(per_op_check(rows, RUNTRACK_START, RAW_MANY))
        return out

    return assemble(
        args,
        contenders,
        samples,
        title="runtrack+SQLite vs fastapi-taskflow",
        checks=checks,
        notes=[
            "SQLite files in a temporary directory (deleted afterwards), WAL mode, "
            "synchronous left at its default (FULL) for every contender.",
            "runtrack: SQLRunRegistry('sqlite+aiosqlite:///<file>'), one file per measurement.",
            f"{TASKFLOW}: TaskManager(snapshot_db=<file>, queues={{'default': "
            f"QueueConfig(concurrency={conc})}}), default snapshot_interval (60 s); tasks "
            "added with ManagedBackgroundTasks(manager).add_task(noop) outside a request "
            "(its documented non-request use); done = every task SUCCESS in its in-memory "
            "store. It writes a task to SQLite only once finished (flush_one, one transaction "
            "per task); PENDING/RUNNING live only in memory.",
            "Lag: a separate sqlite3 connection counts the finished rows in the file: every "
            f"{SAMPLE_EVERY * 1000:.0f} ms during the run (finished runs minus rows; the reads "
            "cost every contender the same), as the last run ends (how many of the n-1 runs "
            "finished before it are missing), when the library reports 'done' (runtrack: "
            "wait_all() returned; fastapi-taskflow: every task SUCCESS in its store), then "
            "every 5 ms until all n rows are there.",
            "Raw: Python's sqlite3, a 12-column runs-like table with a text primary key; "
            "executemany of all n rows in one transaction; INSERT + COMMIT per row.",
            "Versions: "
            + versions("aiosqlite", "sqlalchemy", "fastapi-taskflow")
            + f", SQLite {sqlite3.sqlite_version}",
            *skipped,
        ],
        data={"skipped": skipped},
        extra_tables=lag_table,
    )
