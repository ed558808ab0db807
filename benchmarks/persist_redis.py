"""Section ``redis``: runtrack+Redis against arq, saq and taskiq, and Redis's raw write limit.

Every contender takes ``--persist-n`` no-op jobs from enqueue to done. The peers run their
worker in this process and event loop, at concurrency ``--persist-concurrency``, started
before the jobs are enqueued (as in a service whose worker is always running); jobs are
enqueued by ``C`` concurrent calls at a time, and the clock stops when the library's own
post-completion hook has fired for every job, i.e. once the job's result/status is written
to Redis:

- arq: ``Worker(functions, redis_pool=..., max_jobs=C, poll_delay=0.05)`` run through
  ``Worker.main()`` as a task; done = ``after_job_end`` (called after the result is
  recorded) for every job;
- saq: ``Worker(queue, functions, concurrency=C)`` whose ``start()`` runs as a task, on a
  ``RedisQueue(max_concurrent_ops=C)`` (its default, 20, throttles the C concurrent
  enqueues); done = ``after_process`` (called after ``job.finish``) for every job;
- taskiq: ``RedisStreamBroker`` with ``RedisAsyncResultBackend`` and an in-process
  ``Receiver(broker, max_async_tasks=C).listen(...)``; done = a middleware's
  ``post_save`` (after the result is stored) for every job.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from _harness import Check, SectionResult, log, section
from _persist import (
    RAW_CHUNK,
    RAW_COLUMNS,
    RUNTRACK_START,
    Contender,
    Tags,
    add_common_arguments,
    assemble,
    chunks,
    gather_in_waves,
    missing,
    per_op_check,
    ratio_check,
    raw_contenders,
    raw_row,
    reachable,
    run_all,
    runtrack_contenders,
    time_limit,
    versions,
)

ARQ = "arq"
SAQ = "saq"
TASKIQ = "taskiq"
RAW_PIPELINED = f"pipelined HSET ({RAW_CHUNK:,} per round trip)"
RAW_SINGLE = "HSET, one per round trip"
#: Connection pool size given to the peers' clients (redis-py >= 6 defaults to 100, which
#: C concurrent enqueuers plus C running jobs exhaust).
PEER_POOL = 1_000


def redis_client(url: str) -> Any:
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url, max_connections=PEER_POOL)


async def delete_matching(url: str, pattern: str) -> int:
    """Delete every key matching ``pattern`` (SCAN, then DEL in chunks)."""
    client = redis_client(url)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1_000)]
        for part in chunks(keys, 500):
            await client.delete(*part)
        return len(keys)
    finally:
        await client.aclose()


# -- peers ------------------------------------------------------------------------------------


async def arq_noop(ctx: dict[str, Any]) -> None:
    return None


async def saq_noop(ctx: dict[str, Any]) -> None:
    return None


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` until it is done: a worker loop may swallow one cancellation.

    (arq's ``Worker.main()`` sometimes does, inside a Redis call, and then polls on.)
    """
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.5)
    if task is not None and not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


class Countdown:
    """Sets ``done`` when ``hit`` has been called ``n`` times."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.n:
            self.done.set()


async def run_arq(
    url: str, tag: str, n: int, concurrency: int, extras: list[dict[str, Any]]
) -> float:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker

    queue = f"{tag}:arq"
    countdown = Countdown(n)

    async def after_job_end(ctx: dict[str, Any]) -> None:
        countdown.hit()

    settings = RedisSettings.from_dsn(url)
    settings.max_connections = PEER_POOL
    pool = await create_pool(settings, default_queue_name=queue)
    worker = Worker(
        [arq_noop],
        queue_name=queue,
        redis_pool=pool,
        max_jobs=concurrency,
        handle_signals=False,
        poll_delay=0.05,
        log_results=False,
        after_job_end=after_job_end,
    )
    task = None
    try:
        async with asyncio.timeout(time_limit(n)):
            start = perf_counter()
            task = asyncio.create_task(worker.main())
            counter = iter(range(n))
            await gather_in_waves(
                lambda: pool.enqueue_job("arq_noop", _job_id=f"{tag}:{next(counter)}"),
                n,
                concurrency,
            )
            enqueued = perf_counter() - start
            await countdown.done.wait()
            elapsed = perf_counter() - start
        if worker.jobs_complete != n or worker.jobs_failed:
            raise RuntimeError(
                f"arq completed {worker.jobs_complete} and failed {worker.jobs_failed} of {n}"
            )
        extras.append({"enqueue_s": enqueued, "total_s": elapsed})
        return elapsed
    finally:
        await stop_task(task)
        await worker.close()
        await delete_matching(url, f"*{tag}*")


async def run_saq(
    url: str, tag: str, n: int, concurrency: int, extras: list[dict[str, Any]]
) -> float:
    from saq import Worker
    from saq.queue.redis import RedisQueue

    countdown = Countdown(n)

    async def after_process(ctx: Any) -> None:
        countdown.hit()

    queue = RedisQueue(redis_client(url), name=f"{tag}saq", max_concurrent_ops=concurrency)
    await queue.connect()
    worker = Worker(
        queue, functions=[saq_noop], concurrency=concurrency, after_process=after_process
    )
    task = None
    try:
        async with asyncio.timeout(time_limit(n)):
            start = perf_counter()
            task = asyncio.create_task(worker.start())
            await gather_in_waves(lambda: queue.enqueue("saq_noop"), n, concurrency)
            enqueued = perf_counter() - start
            await countdown.done.wait()
            elapsed = perf_counter() - start
        complete = await queue.count("incomplete")
        if complete:
            raise RuntimeError(f"saq reports {complete} incomplete jobs after all {n} finished")
        extras.append({"enqueue_s": enqueued, "total_s": elapsed})
        return elapsed
    finally:
        await worker.stop()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        await queue.disconnect()
        await delete_matching(url, f"*{tag}*")


async def run_taskiq(
    url: str, tag: str, n: int, concurrency: int, extras: list[dict[str, Any]]
) -> float:
    from taskiq import TaskiqMiddleware
    from taskiq.receiver import Receiver
    from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

    countdown = Countdown(n)
    failures: list[str] = []

    class Done(TaskiqMiddleware):
        def post_save(self, message: Any, result: Any) -> None:
            if result.is_err:
                failures.append(repr(result.error))
            countdown.hit()

    backend = RedisAsyncResultBackend(
        url, prefix_str=f"{tag}:res", result_ex_time=3600, max_connection_pool_size=PEER_POOL
    )
    broker = (
        RedisStreamBroker(url, queue_name=f"{tag}:stream", max_connection_pool_size=PEER_POOL)
        .with_result_backend(backend)
        .with_middlewares(Done())
    )

    @broker.task(task_name="noop")
    async def taskiq_noop() -> None:
        return None

    broker.is_worker_process = True  # this process both sends and executes the tasks
    await broker.startup()
    finish = asyncio.Event()
    # max_tasks_to_execute: the receiver stops reading after the n-th message. Stopping it
    # with finish_event instead cancels a pending XREADGROUP, which hangs with redis-py 8.
    receiver = Receiver(
        broker, max_async_tasks=concurrency, run_startup=False, max_tasks_to_execute=n
    )
    task = None
    try:
        async with asyncio.timeout(time_limit(n)):
            start = perf_counter()
            task = asyncio.create_task(receiver.listen(finish))
            await gather_in_waves(taskiq_noop.kiq, n, concurrency)
            enqueued = perf_counter() - start
            await countdown.done.wait()
            elapsed = perf_counter() - start
        if failures:
            raise RuntimeError(f"taskiq: {len(failures)} of {n} failed, e.g. {failures[0]}")
        extras.append({"enqueue_s": enqueued, "total_s": elapsed})
        return elapsed
    finally:
        finish.set()
        if task is not None:
            await asyncio.wait([task], timeout=3)
        await stop_task(task)
        await broker.shutdown()
        await delete_matching(url, f"*{tag}*")


PEERS: dict[str, tuple[tuple[str, ...], Callable[..., Awaitable[float]]]] = {
    ARQ: (("arq",), run_arq),
    SAQ: (("saq",), run_saq),
    TASKIQ: (("taskiq", "taskiq_redis"), run_taskiq),
}


# -- the raw write limit ----------------------------------------------------------------------


def _mapping(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(RAW_COLUMNS[1:], row[1:], strict=True))


async def raw_pipelined(url: str, tag: str, n: int) -> float:
    rows = [raw_row(i, tag) for i in range(n)]
    client = redis_client(url)
    try:
        await client.ping()
        start = perf_counter()
        for part in chunks(rows, RAW_CHUNK):
            async with client.pipeline(transaction=False) as pipe:
                for row in part:
                    pipe.hset(f"{tag}:{row[0]}", mapping=_mapping(row))
                await pipe.execute()
        return perf_counter() - start
    finally:
        await client.aclose()
        await delete_matching(url, f"{tag}:*")


async def raw_single(url: str, tag: str, n: int) -> float:
    rows = [raw_row(i, tag) for i in range(n)]
    client = redis_client(url)
    try:
        await client.ping()
        start = perf_counter()
        for row in rows:
            await client.hset(f"{tag}:{row[0]}", mapping=_mapping(row))
        return perf_counter() - start
    finally:
        await client.aclose()
        await delete_matching(url, f"{tag}:*")


def redis_py_caution() -> list[str]:
    try:
        major = int(importlib.metadata.version("redis").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return []
    if major < 6:
        return []
    return [
        f"CAUTION: redis-py {major}.x here, outside arq's and taskiq-redis 1.0's declared "
        "range (redis<6; `pip install -e '.[bench]'` installs 5.x). On redis-py 5.3 arq and "
        "taskiq measured ~1,000-1,100 jobs/s on this machine, 20-40% more than on 8.1."
    ]


# -- the section ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def available(args: argparse.Namespace) -> str | None:
    gone = missing("redis")
    if gone:
        return "the redis package is missing: pip install -e '.[redis]'"
    return reachable(args.redis_url, 6379, "Redis")


@section(
    "redis",
    "Redis: runtrack+Redis vs arq, saq, taskiq; raw HSET limit",
    add_arguments=add_arguments,
    available=available,
)
def run(args: argparse.Namespace) -> SectionResult:
    from runtrack.registry.redis import RedisRunRegistry

    url: str = args.redis_url
    n: int = args.persist_n
    conc: int = args.persist_concurrency
    tags = Tags("r")

    def make_registry(tag: str) -> RedisRunRegistry:
        return RedisRunRegistry(url, prefix=f"{tag}:")

    async def cleanup(tag: str) -> None:
        await delete_matching(url, f"{tag}:*")

    contenders = runtrack_contenders(make_registry, cleanup, tags, n, conc)
    skipped: list[str] = []
    for label, (modules, runner) in PEERS.items():
        gone = missing(*modules)
        if gone:
            skipped.append(
                f"{label}: not measured, {', '.join(gone)} not installed "
                "(pip install -e '.[bench]')"
            )
            continue
        extras: list[dict[str, Any]] = []
        contenders.append(
            Contender(
                label,
                "peer",
                n,
                measure=functools.partial(_peer, runner, url, tags, n, conc, extras),
                warmup=functools.partial(_peer, runner, url, tags, min(n, 500), conc, []),
                extras=extras,
            )
        )
    contenders += raw_contenders(
        tags,
        n,
        (RAW_PIPELINED, functools.partial(raw_pipelined, url)),
        (RAW_SINGLE, functools.partial(raw_single, url)),
    )

    try:
        samples = run_all(contenders, args.persist_repeat, quiet=args.quiet)
    finally:
        left = asyncio.run(delete_matching(url, f"*{tags.base}*"))
        if left:
            log(f"  [redis] swept {left} leftover keys", quiet=args.quiet)

    def checks(rows: dict[str, dict[str, Any]]) -> list[Check]:
        out = [ratio_check(rows, RUNTRACK_START, peer, 10) for peer in PEERS]
        out.append(per_op_check(rows, RUNTRACK_START, RAW_PIPELINED))
        return out

    return assemble(
        args,
        contenders,
        samples,
        title="runtrack+Redis vs arq, saq, taskiq",
        checks=checks,
        notes=[
            f"Redis at {url}; each measurement uses its own key prefix / queue names and "
            "deletes its keys afterwards (SCAN MATCH + DEL).",
            "Peers: worker in this process and event loop, concurrency "
            f"{conc}, started before enqueueing; jobs enqueued {conc} concurrent calls at a "
            "time (arq enqueue_job, saq enqueue, taskiq kiq: none has a batch enqueue); done "
            "when the library's post-completion hook fired for every job (arq after_job_end, "
            "saq after_process, taskiq middleware post_save), i.e. after each job's "
            "result/status was written to Redis. arq poll_delay=0.05 s (default 0.5); saq "
            f"max_concurrent_ops={conc} (default 20 throttles enqueue: ~15% slower); "
            "taskiq: RedisStreamBroker + RedisAsyncResultBackend; peers' redis pools sized "
            f"{PEER_POOL} (redis-py >= 6 defaults to 100, too few for {conc} enqueuers + "
            f"{conc} jobs).",
            "Raw HSET: a 12-field hash per run (the fields runtrack keeps for a finished "
            "run), no indexes; runtrack also maintains sorted-set indexes in the same script.",
            "Versions: " + versions("redis", "arq", "saq", "taskiq", "taskiq-redis", "hiredis"),
            *redis_py_caution(),
            *skipped,
        ],
        data={"redis_url": url, "skipped": skipped},
    )


async def _peer(
    runner: Callable[..., Awaitable[float]],
    url: str,
    tags: Tags,
    n: int,
    concurrency: int,
    extras: list[dict[str, Any]],
) -> float:
    return await runner(url, tags.next(), n, concurrency, extras)
