"""The contenders of the ``durable`` section, each as a *kit*: a worker and a client.

A kit knows how to run one library's worker (``worker``: until ``stop`` is set, in this
process or in a child process started by ``_durable_worker.py``) and how to drive it from
the benchmark's process (``client``: bulk-enqueue ``n`` no-op jobs, count the jobs not yet
done, enqueue one "stamp" job for the latency measurement). Every measurement gives the
kit a fresh ``tag``; the kit's ``setup`` creates what the tag names (tables, schema) and
``teardown`` deletes everything it named.

The no-op job is ``noop``; the ``stamp`` job prints ``S <index> <time.monotonic_ns()>`` on
the worker's stdout when it starts (``CLOCK_MONOTONIC`` is one clock for every process of
the machine), which the latency measurement reads.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from _persist import gather_in_waves
from persist_postgres import connect, plain_dsn
from persist_redis import PEER_POOL, delete_matching, redis_client

#: pgqueuer's dequeue batch (``QueueManager.run(batch_size=...)``): its tuning guide says to
#: raise it from the default 10 for short jobs; 10, 50, 100 and 200 were tried here.
PGQUEUER_BATCH = 100
#: arq's poll interval when its queue is empty (default 0.5 s).
ARQ_POLL_DELAY = 0.05


def stamp(index: int) -> None:
    """The latency probe: tell the benchmark (on stdout) when job ``index`` started."""
    sys.stdout.write(f"S {index} {time.monotonic_ns()}\n")
    sys.stdout.flush()


class Client(Protocol):
    """The benchmark's side of a kit, for one tag."""

    async def enqueue(self, n: int) -> None:
        """Enqueue ``n`` no-op jobs, in bulk where the library can."""
        ...

    async def remaining(self) -> int:
        """Jobs enqueued and not yet recorded as done."""
        ...

    async def enqueue_stamp(self, index: int) -> None:
        """Enqueue one ``stamp(index)`` job."""
        ...

    async def verify(self, n: int) -> None:
        """Raise unless the store records ``n`` successful jobs (after ``remaining() == 0``)."""
        ...


class Kit(Protocol):
    @property
    def name(self) -> str:
        """The kit's name, as `make_kit` and the worker script know it."""
        ...

    @property
    def url(self) -> str:
        """The store's URL."""
        ...

    async def setup(self, tag: str) -> None: ...

    async def teardown(self, tag: str) -> None: ...

    async def worker(
        self, tag: str, concurrency: int, ready: asyncio.Event, stop: asyncio.Event
    ) -> None:
        """Run a worker for ``tag``; set ``ready`` once it takes jobs; return after ``stop``."""
        ...

    def client(self, tag: str) -> Any:
        """An async context manager yielding a `Client`."""
        ...


#: How long a freshly started worker is given to connect and start listening before it is
#: declared ready (the same for every kit; untimed).
SETTLE = 0.3


async def serve(ready: asyncio.Event, stop: asyncio.Event) -> None:
    """Set ``ready`` once a started worker had `SETTLE` seconds; return once ``stop`` is set."""
    await asyncio.sleep(SETTLE)
    ready.set()
    await stop.wait()


# -- pgqueuer (PostgreSQL) --------------------------------------------------------------------


def _pgqueuer_queries(conn: Any, tag: str) -> Any:
    from pgqueuer.adapters.persistence import qb
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.domain.settings import DBSettings
    from pgqueuer.queries import Queries

    settings = DBSettings(prefix=f"{tag}_")
    return Queries(
        AsyncpgDriver(conn),
        qbe=qb.QueryBuilderEnvironment(settings),
        qbq=qb.QueryQueueBuilder(settings),
        qbs=qb.QuerySchedulerBuilder(settings),
    )


@dataclass
class PgQueuerKit:
    url: str
    name: str = "pgqueuer"

    @property
    def dsn(self) -> str:
        return plain_dsn(self.url)

    async def setup(self, tag: str) -> None:
        conn = await connect(self.dsn)
        try:
            await _pgqueuer_queries(conn, tag).install()
        finally:
            await conn.close()

    async def teardown(self, tag: str) -> None:
        conn = await connect(self.dsn)
        try:
            await _pgqueuer_queries(conn, tag).uninstall()
        finally:
            await conn.close()

    async def worker(
        self, tag: str, concurrency: int, ready: asyncio.Event, stop: asyncio.Event
    ) -> None:
        from pgqueuer.qm import QueueManager
        from pgqueuer.types import Channel

        conn = await connect(self.dsn)
        queries = _pgqueuer_queries(conn, tag)
        qm = QueueManager(queries, channel=Channel(queries.qbe.settings.channel))

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            return None

        @qm.entrypoint("stamp")
        async def stamp_job(job: Any) -> None:
            stamp(int(job.payload))

        # max_concurrent_tasks=None: unlimited, the default; concurrency is the batch size.
        task = asyncio.create_task(qm.run(batch_size=PGQUEUER_BATCH))
        try:
            await serve(ready, stop)
        finally:
            qm.shutdown.set()
            await asyncio.wait_for(task, 30)
            if not conn.is_closed():
                await conn.close()

    @asynccontextmanager
    async def client(self, tag: str) -> AsyncIterator[PgQueuerClient]:
        conn = await connect(self.dsn)
        try:
            yield PgQueuerClient(conn, _pgqueuer_queries(conn, tag))
        finally:
            await conn.close()


@dataclass
class PgQueuerClient:
    conn: Any
    queries: Any

    async def enqueue(self, n: int) -> None:
        await self.queries.enqueue(["noop"] * n, [None] * n, [0] * n)

    async def remaining(self) -> int:
        table = self.queries.qbe.settings.qualified.queue_table
        return int(await self.conn.fetchval(f"SELECT count(*) FROM {table}"))

    async def enqueue_stamp(self, index: int) -> None:
        await self.queries.enqueue("stamp", str(index).encode())

    async def verify(self, n: int) -> None:
        table = self.queries.qbe.settings.qualified.queue_table_log
        done = await self.conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE status = 'successful' AND entrypoint = 'noop'"
        )
        if done != n:
            raise RuntimeError(f"pgqueuer logged {done} successful jobs of {n}")


# -- saq and arq (Redis) ----------------------------------------------------------------------


async def saq_noop(ctx: Any) -> None:
    return None


async def saq_stamp(ctx: Any, *, index: int) -> None:
    stamp(index)


@dataclass
class SaqKit:
    url: str
    concurrency: int
    name: str = "saq"

    def queue(self, tag: str) -> Any:
        from saq.queue.redis import RedisQueue

        # max_concurrent_ops: the default 20 throttles concurrent enqueues (persist_redis).
        return RedisQueue(
            redis_client(self.url), name=f"{tag}saq", max_concurrent_ops=self.concurrency
        )

    async def setup(self, tag: str) -> None:
        return None

    async def teardown(self, tag: str) -> None:
        await delete_matching(self.url, f"*{tag}*")

    async def worker(
        self, tag: str, concurrency: int, ready: asyncio.Event, stop: asyncio.Event
    ) -> None:
        from saq import Worker

        queue = self.queue(tag)
        await queue.connect()
        worker = Worker(queue, functions=[saq_noop, saq_stamp], concurrency=concurrency)
        task = asyncio.create_task(worker.start())
        try:
            await serve(ready, stop)
        finally:
            await worker.stop()
            await asyncio.gather(task, return_exceptions=True)
            await queue.disconnect()

    @asynccontextmanager
    async def client(self, tag: str) -> AsyncIterator[SaqClient]:
        queue = self.queue(tag)
        await queue.connect()
        try:
            yield SaqClient(queue, self.concurrency)
        finally:
            await queue.disconnect()


@dataclass
class SaqClient:
    queue: Any
    width: int

    async def enqueue(self, n: int) -> None:
        # saq has no bulk enqueue: `width` concurrent enqueue() calls at a time.
        await gather_in_waves(lambda: self.queue.enqueue("saq_noop"), n, self.width)

    async def remaining(self) -> int:
        return int(await self.queue.count("incomplete"))

    async def enqueue_stamp(self, index: int) -> None:
        await self.queue.enqueue("saq_stamp", index=index)

    async def verify(self, n: int) -> None:
        return None  # remaining() == 0 means every job finished; none can fail


async def arq_noop(ctx: Any) -> None:
    return None


async def arq_stamp(ctx: Any, index: int) -> None:
    stamp(index)


@dataclass
class ArqKit:
    url: str
    concurrency: int
    name: str = "arq"

    async def pool(self, tag: str) -> Any:
        from arq import create_pool
        from arq.connections import RedisSettings

        settings = RedisSettings.from_dsn(self.url)
        settings.max_connections = PEER_POOL
        return await create_pool(settings, default_queue_name=f"{tag}:arq")

    async def setup(self, tag: str) -> None:
        return None

    async def teardown(self, tag: str) -> None:
        await delete_matching(self.url, f"*{tag}*")

    async def worker(
        self, tag: str, concurrency: int, ready: asyncio.Event, stop: asyncio.Event
    ) -> None:
        from arq.worker import Worker

        from persist_redis import stop_task

        pool = await self.pool(tag)
        worker = Worker(
            [arq_noop, arq_stamp],
            queue_name=f"{tag}:arq",
            redis_pool=pool,
            max_jobs=concurrency,
            handle_signals=False,
            poll_delay=ARQ_POLL_DELAY,
            log_results=False,
        )
        task = asyncio.create_task(worker.main())
        try:
            await serve(ready, stop)
        finally:
            await stop_task(task)
            await worker.close()

    @asynccontextmanager
    async def client(self, tag: str) -> AsyncIterator[ArqClient]:
        pool = await self.pool(tag)
        try:
            yield ArqClient(pool, f"{tag}:arq", tag, self.concurrency)
        finally:
            await pool.aclose()


@dataclass
class ArqClient:
    pool: Any
    queue: str
    tag: str
    width: int

    async def enqueue(self, n: int) -> None:
        # arq has no bulk enqueue: `width` concurrent enqueue_job() calls at a time.
        counter = iter(range(n))
        await gather_in_waves(
            lambda: self.pool.enqueue_job("arq_noop", _job_id=f"{self.tag}:{next(counter)}"),
            n,
            self.width,
        )

    async def remaining(self) -> int:
        # arq keeps a job in its queue's sorted set until the job's result is written.
        return int(await self.pool.zcard(self.queue))

    async def enqueue_stamp(self, index: int) -> None:
        await self.pool.enqueue_job("arq_stamp", index, _job_id=f"{self.tag}:s{index}")

    async def verify(self, n: int) -> None:
        return None


# -- the registry -----------------------------------------------------------------------------


def peer_kits(store: str, url: str, concurrency: int) -> list[Kit]:
    """The peers measured on ``store``."""
    if store == "postgres":
        return [PgQueuerKit(url)]
    return [SaqKit(url, concurrency), ArqKit(url, concurrency)]


def make_kit(name: str, url: str, concurrency: int) -> Kit:
    """The kit called ``name`` (as the worker script receives it)."""
    from _durable_runtrack import RuntrackKit

    if name == "pgqueuer":
        return PgQueuerKit(url)
    if name == "saq":
        return SaqKit(url, concurrency)
    if name == "arq":
        return ArqKit(url, concurrency)
    if name.startswith("runtrack-"):
        return RuntrackKit(name.removeprefix("runtrack-"), url)
    raise ValueError(f"unknown kit {name!r}")
