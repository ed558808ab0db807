"""How the ``durable`` section measures: throughput in one or two worker processes, latency.

See `durable` for what is measured and `_durable_kits` for the contenders.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

from _durable_kits import Kit
from _persist import Tags, time_limit
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


# -- one measurement ----------------------------------------------------------------------------


@contextlib.contextmanager
def in_process_logging(mode: str, setup: str) -> Iterator[None]:
    """The logging ``setup`` while a worker runs in this process (``mode``), else none."""
    if mode != IN_PROCESS:
        yield
        return
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
                kit.url,
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
    with in_process_logging(mode, logging):
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
                await asyncio.wait(
                    [local, started], timeout=120, return_when=asyncio.FIRST_COMPLETED
                )
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
