"""Durable tasks across processes: a crashed worker's runs, and work shared by replicas.

Workers are child Python processes (``sys.executable``) running a manager that registered
the task; each execution appends ``run_id pid`` to a file, so the test can tell how many
times, and where, every run executed. Work sharing runs on the session's Redis Cluster
too (``redis_cluster.py``), through a ``redis+cluster://`` URL.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from redis_cluster import cluster_url
from redis_registries import (
    redis_cluster_registry,
    redis_prefix,
    redis_url,
    start_needed_fixtures,
)
from runtrack import (
    BackgroundTaskManager,
    Run,
    RunRegistry,
    RunStatus,
    TaskClaiming,
    TaskFunction,
)
from runtrack._claims import TaskSpec
from sql_registries import postgres_url, sql_registry

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

#: Seconds a child process may take to import runtrack and start.
CHILD_START = 60.0
#: The lease of the crash test's workers: short, so that the crashed one is swept quickly.
LEASE = 1.0
#: The lease of the work-sharing replicas, which never die: longer than any stall of a busy
#: machine (registry writes held up for over a second were seen), which would get a live
#: replica swept, its runs recorded interrupted and the test failed.
SHARE_LEASE = 30.0

_WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from runtrack import BackgroundTaskManager

    kind, url, prefix, out, mode, requeue = sys.argv[1:7]

    def registry():
        if kind == "sql":
            from runtrack.registry.sql import SQLRunRegistry
            return SQLRunRegistry(url, table_prefix=prefix)
        from runtrack.registry.redis import RedisRunRegistry
        return RedisRunRegistry(url, prefix=prefix)

    async def main():
        limit = 50 if mode == "crash" else None
        manager = BackgroundTaskManager(
            registry(), owner=f"{mode}-{os.getpid()}", heartbeat_interval=0.1,
            lease=%(share_lease)s if mode == "share" else %(lease)s,
            poll_interval=0.1, max_concurrency=limit,
        )

        @manager.task(name="work", requeue_on_interrupt=requeue == "1")
        async def work(i):
            fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"{i} {os.getpid()}\\n".encode())
            os.close(fd)
            if mode == "crash":
                await asyncio.sleep(3600)
            elif mode == "share":
                await asyncio.sleep(0.01)
            return i

        async with manager:
            print("ready", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
) % {"lease": LEASE, "share_lease": SHARE_LEASE}

Backend = tuple[RunRegistry, list[str]]


@asynccontextmanager
async def _postgres() -> AsyncIterator[Backend]:
    async with sql_registry(postgres_url()) as registry:
        yield registry, ["sql", postgres_url(), registry.table_prefix]


@asynccontextmanager
async def _redis() -> AsyncIterator[Backend]:
    from runtrack.registry.redis import RedisRunRegistry

    async with redis_prefix() as prefix, RedisRunRegistry(redis_url(), prefix=prefix) as registry:
        yield registry, ["redis", redis_url(), prefix]


@asynccontextmanager
async def _redis_cluster() -> AsyncIterator[Backend]:
    from runtrack.registry.redis import RedisRunRegistry

    async with redis_cluster_registry() as registry:
        assert isinstance(registry, RedisRunRegistry)
        yield registry, ["redis", cluster_url(), registry.prefix]


BACKENDS: dict[str, Callable[[], AbstractAsyncContextManager[Backend]]] = {
    "postgresql": _postgres,
    "redis": _redis,
}
#: Backends of the work-sharing test: the single-node ones and a Redis Cluster.
SHARING_BACKENDS: dict[str, Callable[[], AbstractAsyncContextManager[Backend]]] = {
    **BACKENDS,
    "redis-cluster": _redis_cluster,
}


async def start_worker(
    args: list[str], out: Path, mode: str, requeue: bool
) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WORKER, *args, str(out), mode, "1" if requeue else "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert child.stdout is not None
    async with asyncio.timeout(CHILD_START):
        while (line := await child.stdout.readline()) != b"ready\n":
            assert line, "the worker ended before it was ready"
    return child


async def stop(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.kill()
    await child.wait()


def executions(out: Path) -> list[tuple[int, int]]:
    """Every execution recorded: (argument, pid)."""
    if not out.exists():
        return []
    pairs = (line.split() for line in out.read_text().splitlines() if line)
    return [(int(i), int(pid)) for i, pid in pairs]


def submitter(
    registry: RunRegistry, *, requeue: bool = False
) -> tuple[BackgroundTaskManager, TaskFunction[..., object]]:
    """A manager that only enqueues ``work`` (it does not register the task)."""
    manager = BackgroundTaskManager(registry, owner="submitter")
    spec = TaskSpec(name="work", fn=lambda i: i, requeue_on_interrupt=requeue)
    return manager, TaskFunction(spec, lambda: manager)


async def wait_until(predicate: Callable[[], object], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("requeue", [False, True], ids=["interrupted", "requeued"])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_crashed_worker(backend: str, requeue: bool, tmp_path: Path) -> None:
    """SIGKILL a worker holding 50 RUNNING runs while 200 more wait QUEUED; a survivor in
    another process runs the 200, and records the 50 FAILED or re-runs them."""
    out = tmp_path / "executions"
    async with BACKENDS[backend]() as (registry, args):
        assert isinstance(registry, TaskClaiming)
        manager, work = submitter(registry, requeue=requeue)
        async with manager:
            runs = await work.submit_many([([i], {}) for i in range(50)])
            crashed = await start_worker(args, out, "crash", requeue)
            survivor: asyncio.subprocess.Process | None = None
            try:
                running: list[Run] = []

                async def started() -> bool:
                    # A claim records its runs RUNNING before their code starts: wait for
                    # both, the records and the 50 executions.
                    running[:] = await registry.list_runs(status=RunStatus.RUNNING, task="work")
                    return len(running) == 50 and len(executions(out)) == 50

                await wait_until(started, "50 runs recorded RUNNING and executing")
                owner = running[0].owner
                assert owner is not None
                # 200 more, which the worker does not claim: it is at its limit, and holds
                # no prefetch before one of its runs has ended.
                runs += await work.submit_many([([i], {}) for i in range(50, 250)])
                counts = await registry.count_runs(name="work")
                assert (counts[RunStatus.QUEUED], counts[RunStatus.RUNNING]) == (200, 50)
                crashed.send_signal(signal.SIGKILL)
                await crashed.wait()

                survivor = await start_worker(args, out, "survive", requeue)

                async def finished() -> bool:
                    counts = await registry.count_runs(name="work")
                    return counts[RunStatus.COMPLETED] + counts[RunStatus.FAILED] == 250

                await wait_until(finished, "every run to end")
            finally:
                await stop(crashed)
                if survivor is not None:
                    await stop(survivor)

        final = {run.run_id: await registry.get_run(run.run_id) for run in runs}
    first = {run.run_id for run in runs[:50]}
    done = collections.Counter(i for i, _ in executions(out))
    by_pid = {pid for _, pid in executions(out)}
    assert crashed.pid in by_pid
    for run_id, run in final.items():
        assert run is not None
        if run_id in first and not requeue:
            assert (run.status, run.error_type) == (RunStatus.FAILED, "RunInterrupted")
        else:
            assert run.status is RunStatus.COMPLETED, run
    assert set(done) == set(range(250))
    assert all(done[i] == (2 if requeue else 1) for i in range(50))
    assert all(done[i] == 1 for i in range(50, 250))


@pytest.mark.parametrize("backend", sorted(SHARING_BACKENDS))
async def test_work_shared_by_two_replicas(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Replica A submits 10,000 runs of a 10 ms task; B and C (processes) run each once."""
    start_needed_fixtures(request, backend)
    out = tmp_path / "executions"
    async with SHARING_BACKENDS[backend]() as (registry, args):
        workers = await asyncio.gather(
            start_worker(args, out, "share", False), start_worker(args, out, "share", False)
        )
        try:
            manager, work = submitter(registry)
            async with manager:
                runs = await work.submit_many([([i], {}) for i in range(10_000)])

                async def finished() -> bool:
                    counts = await registry.count_runs(name="work")
                    return counts[RunStatus.COMPLETED] == 10_000

                await wait_until(finished, "every run to complete")
        finally:
            for worker in workers:
                await stop(worker)
        sample = [await registry.get_run(run.run_id) for run in runs[::500]]
    done = collections.Counter(i for i, _ in executions(out))
    pids = collections.Counter(pid for _, pid in executions(out))
    assert set(done) == set(range(10_000))
    assert set(done.values()) == {1}
    assert set(pids) == {w.pid for w in workers}, pids
    assert all(run is not None and run.status is RunStatus.COMPLETED for run in sample)
    assert {run.owner for run in sample if run is not None} <= {f"share-{w.pid}" for w in workers}
