"""What only `RedisRunRegistry` has: its key layout, scripts, expiry, errors and repr.

The shared behaviour is in ``test_registry_conformance.py``; these tests talk to the same
server (``RUNTRACK_TEST_REDIS_URL``), each under a prefix of its own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from redis_registries import redis_prefix, redis_url
from runtrack import (
    DuplicateRunError,
    RegistryUnavailableError,
    Run,
    RunNotFoundError,
    RunStatus,
    registry_from_url,
)

redis_asyncio = pytest.importorskip("redis.asyncio")
redis_exceptions = pytest.importorskip("redis.exceptions")

from runtrack._clock import dt_to_us  # noqa: E402
from runtrack.registry._redis_layout import Keys  # noqa: E402
from runtrack.registry.base import RunWrite  # noqa: E402
from runtrack.registry.redis import RedisRunRegistry  # noqa: E402

Q, R, C, F, X = (
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
)
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
UNREACHABLE = "redis://:hunter2@127.0.0.1:1/0"

Factory = Callable[..., Awaitable[RedisRunRegistry]]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A fresh prefix on the test server, wiped afterwards."""
    async with redis_prefix() as prefix:
        yield prefix


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    """A plain client on the test server, for looking at keys directly."""
    client = redis_asyncio.Redis.from_url(redis_url(), decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
async def make_registry(prefix: str) -> AsyncIterator[Factory]:
    """Build registries on the test prefix; all are closed after the test."""
    async with AsyncExitStack() as stack:

        async def make(**options: Any) -> RedisRunRegistry:
            url_or_client = options.pop("url_or_client", redis_url())
            registry = RedisRunRegistry(url_or_client, prefix=prefix, **options)
            stack.push_async_callback(registry.aclose)
            return registry

        yield make


@pytest.fixture
async def registry(make_registry: Factory) -> RedisRunRegistry:
    return await make_registry()


async def keys_under(client: Any, prefix: str) -> set[str]:
    return {key async for key in client.scan_iter(match=f"{prefix}*", count=1000)}


async def wait_until_gone(client: Any, key: str, timeout: float = 5.0) -> None:
    """Poll until Redis expires ``key`` (a real expiry: nothing to await instead)."""
    deadline = time.monotonic() + timeout
    while await client.exists(key):
        assert time.monotonic() < deadline, f"{key} did not expire within {timeout} s"
        await asyncio.sleep(0.02)


class ReplyDroppingProxy:
    """A loopback proxy to Redis that, once armed, loses the reply to the next EVALSHA.

    The server runs the script; the client sees its connection close instead of the
    reply, as when a network cut lands between the two. redis-py then re-sends the call.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.armed = False
        self.dropped = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers += [writer, up_writer]
        doomed = asyncio.Event()

        async def to_server() -> None:
            while data := await reader.read(65536):
                if self.armed and b"EVALSHA" in data:
                    self.armed = False
                    doomed.set()
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if doomed.is_set():
                    self.dropped.set()
                    writer.close()
                    up_writer.close()
                    return
                writer.write(data)
                await writer.drain()

        for pump in (to_server(), to_client()):
            task = asyncio.create_task(pump)
            self._tasks.add(task)


@pytest.fixture
async def proxy() -> AsyncIterator[ReplyDroppingProxy]:
    from urllib.parse import urlsplit

    url = urlsplit(redis_url())
    proxy = ReplyDroppingProxy((url.hostname or "127.0.0.1", url.port or 6379))
    await proxy.start()
    yield proxy
    await proxy.close()


class TestKeyLayout:
    """A run is one hash plus sorted-set index entries scored by created_at."""

    async def test_run_hash_and_indexes(
        self, registry: RedisRunRegistry, client: Any, keys: Keys, prefix: str
    ) -> None:
        run = Run(
            run_id="r1",
            name="export",
            group="exports",
            tags={"team": "a"},
            parameters={"n": 1},
            created_at=at(0),
        )
        await registry.add_run(run)
        await registry.append_output("r1", [("stdout", "hi")])

        stored = await client.hgetall(keys.run("r1"))
        created = dt_to_us(at(0))
        assert stored["status"] == "queued"
        assert stored["name"] == "export"
        assert stored["created_at"] == str(created)
        assert stored["parameters"] == '{"n":1}'
        assert stored["tags"] == '{"team":"a"}'
        assert "result" not in stored  # None is an absent field
        assert "started_at" not in stored
        for index in (
            keys.created,
            keys.status(Q),
            keys.name("export"),
            keys.group("exports"),
            keys.tag("team", "a"),
        ):
            assert await client.zscore(index, "r1") == created, index
        assert await client.zscore(keys.finished, "r1") is None
        assert await client.get(keys.schema) == "1"
        assert await client.llen(keys.out("r1")) == 1
        assert keys.name("export") == f"{prefix}idx:name:6:export"
        assert keys.tag("team", "a") == f"{prefix}idx:tag:4:team=a"

    async def test_transition_moves_status_entry(
        self, registry: RedisRunRegistry, client: Any, keys: Keys
    ) -> None:
        await registry.add_run(Run(run_id="r1", status=R, created_at=at(0)))

        await registry.transition("r1", C, finished_at=at(5))

        assert await client.zscore(keys.status(R), "r1") is None
        assert await client.zscore(keys.status(C), "r1") == dt_to_us(at(0))
        assert await client.zscore(keys.finished, "r1") == dt_to_us(at(5))
        assert await client.pttl(keys.run("r1")) == -1  # no finished_ttl: kept

    async def test_tag_change_moves_tag_entries(
        self, registry: RedisRunRegistry, client: Any, keys: Keys
    ) -> None:
        await registry.add_run(Run(run_id="r1", tags={"a": "1", "b": "2"}))

        await registry.update_run("r1", tags={"a": "3"})

        assert await client.exists(keys.tag("a", "1"), keys.tag("b", "2")) == 0
        assert await client.zscore(keys.tag("a", "3"), "r1") is not None
        assert await registry.list_runs(tags={"a": "1"}) == []
        assert [r.run_id for r in await registry.list_runs(tags={"a": "3"})] == ["r1"]

        await registry.update_run("r1", tags={})

        assert await client.exists(keys.tag("a", "3")) == 0
        assert "tags" not in await client.hgetall(keys.run("r1"))

    async def test_cleanup_leaves_no_run_keys(
        self, registry: RedisRunRegistry, client: Any, keys: Keys, prefix: str
    ) -> None:
        for i in range(5):
            await registry.add_run(
                Run(
                    run_id=f"r{i}",
                    name=f"n{i}",
                    group="g",
                    tags={"k": str(i)},
                    status=F,
                    finished_at=ago(days=2),
                )
            )
            await registry.append_output(f"r{i}", [("stdout", "x")])

        assert await registry.cleanup_old_runs(older_than=timedelta(days=1)) == 5

        left = {k for k in await keys_under(client, prefix) if not k.startswith(f"{prefix}op:")}
        assert left == {keys.schema}

    async def test_schema_version_mismatch(
        self, make_registry: Factory, client: Any, keys: Keys
    ) -> None:
        await client.set(keys.schema, "99")
        registry = await make_registry()

        with pytest.raises(RuntimeError, match="99"):
            await registry.get_run("x")


class TestScripts:
    """Writes are Lua scripts: atomic, batched, and not re-applied when retried."""

    async def test_write_batch_of_many_runs(
        self, registry: RedisRunRegistry, client: Any, keys: Keys
    ) -> None:
        runs = [Run(run_id=f"b{i}", name="batch", created_at=at(i)) for i in range(300)]
        started = datetime.now(UTC)

        inserted = await registry.write_batch([RunWrite(r.run_id, run=r) for r in runs])
        moved = await registry.write_batch(
            [
                RunWrite(r.run_id, to=R, expect=frozenset({Q}), changes={"started_at": started})
                for r in runs
            ]
            + [RunWrite("b0", to=R, expect=frozenset({Q}))]  # already running: not applied
        )

        assert inserted == [True] * 300
        assert moved == [True] * 300 + [False]
        assert await registry.count_runs(name="batch") == {Q: 0, R: 300, C: 0, F: 0, X: 0}
        assert await client.zcard(keys.status(Q)) == 0
        newest = await registry.list_runs(name="batch", status="running", limit=2)
        assert [r.run_id for r in newest] == ["b299", "b298"]
        assert newest[0].started_at == started

    async def test_race_across_two_clients_has_one_winner(self, make_registry: Factory) -> None:
        first, second = await make_registry(), await make_registry()
        await first.add_run(Run(run_id="race", status=R))

        results = await asyncio.gather(
            *(
                (first, second)[i % 2].transition("race", (C, F, X)[i % 3], owner=f"w{i}")
                for i in range(50)
            )
        )

        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await second.get_run("race") == winners[0]

    async def test_retried_call_is_not_applied_twice(
        self, registry: RedisRunRegistry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # redis-py re-sends a command whose reply was lost; the script call's token makes
        # the second delivery return the first one's outcome.
        await registry.add_run(Run(run_id="r1", status=R))
        monkeypatch.setattr(registry, "_token", lambda: "fixed-token")

        first = await registry.append_output("r1", [("stdout", "once")])
        again = await registry.append_output("r1", [("stdout", "once")])

        assert [c.seq for c in first] == [c.seq for c in again] == [1]
        assert [c.text for c in await registry.get_output("r1")] == ["once"]

        monkeypatch.setattr(registry, "_token", lambda: "other-token")
        done = await registry.transition("r1", C)
        redone = await registry.transition("r1", C)

        assert done is not None
        assert redone == done  # the first call's outcome, not "status did not match"

    async def test_lost_reply_is_not_applied_twice(
        self, make_registry: Factory, proxy: ReplyDroppingProxy
    ) -> None:
        assert proxy._server is not None
        port = proxy._server.sockets[0].getsockname()[1]
        registry = await make_registry(url_or_client=f"redis://127.0.0.1:{port}/0")
        await registry.add_run(Run(run_id="warm-up"))  # loads the scripts

        proxy.armed = True
        await registry.add_run(Run(run_id="r1", status=R))  # no DuplicateRunError on resend
        assert proxy.dropped.is_set()

        proxy.dropped.clear()
        proxy.armed = True
        chunks = await registry.append_output("r1", [("stdout", "once")])
        assert proxy.dropped.is_set()
        assert [c.seq for c in chunks] == [1]
        assert [c.text for c in await registry.get_output("r1")] == ["once"]

        proxy.dropped.clear()
        proxy.armed = True
        done = await registry.transition("r1", C, result=1)
        assert proxy.dropped.is_set()
        assert done is not None  # applied once, reported as applied
        assert done.result == 1

    async def test_scripts_reload_after_script_flush(
        self, registry: RedisRunRegistry, client: Any
    ) -> None:
        await registry.add_run(Run(run_id="r1"))
        await client.script_flush()

        assert await registry.transition("r1", R) is not None
        assert [r.run_id for r in await registry.list_runs()] == ["r1"]


class TestFinishedTTL:
    """finished_ttl expires finished runs and keeps every index consistent."""

    async def test_finished_run_expires_and_indexes_follow(
        self, make_registry: Factory, client: Any, keys: Keys
    ) -> None:
        registry = await make_registry(finished_ttl=60)
        assert registry.finished_ttl == timedelta(seconds=60)
        await registry.add_run(Run(run_id="stays", name="job", tags={"t": "v"}))
        await registry.add_run(Run(run_id="goes", name="job", group="g", tags={"t": "v"}, status=R))
        await registry.append_output("goes", [("stdout", "bye")])
        # finished 59.5 s ago: expires in about 0.5 s, counted from finished_at, not from now
        began = time.monotonic()
        await registry.transition("goes", C, finished_at=ago(seconds=59.5))

        for key in (keys.run("goes"), keys.out("goes")):
            pttl = await client.pttl(key)
            # A busy machine may reach this line after the expiry (-2: gone); that too is
            # only possible if the TTL ran from finished_at (from now it would take 60 s).
            assert 0 < pttl <= 500 or (pttl == -2 and time.monotonic() - began < 59), pttl
        assert await client.pttl(keys.run("stays")) == -1
        await wait_until_gone(client, keys.run("goes"))

        assert await registry.get_run("goes") is None
        assert await registry.get_output("goes") == []
        assert [r.run_id for r in await registry.list_runs(name="job")] == ["stays"]
        assert await registry.count_runs() == {Q: 1, R: 0, C: 0, F: 0, X: 0}
        assert await registry.count_runs(name="job") == {Q: 1, R: 0, C: 0, F: 0, X: 0}
        assert await registry.cleanup_old_runs(older_than=timedelta(0)) == 0
        for index in (
            keys.created,
            keys.finished,
            keys.status(C),
            keys.name("job"),
            keys.group("g"),
            keys.tag("t", "v"),
        ):
            assert await client.zscore(index, "goes") is None, index
        assert await client.hlen(keys.expiring) == 0

    async def test_output_appended_after_finish_expires_too(
        self, make_registry: Factory, client: Any, keys: Keys
    ) -> None:
        registry = await make_registry(finished_ttl=timedelta(hours=1))
        await registry.add_run(Run(run_id="r1", status=C, finished_at=ago(seconds=1)))

        await registry.append_output("r1", [("stdout", "late")])

        expires = await client.pexpiretime(keys.run("r1"))
        assert expires > 0
        assert await client.pexpiretime(keys.out("r1")) == expires

    async def test_run_finished_longer_ago_than_ttl_is_gone_at_once(
        self, make_registry: Factory, client: Any, keys: Keys, prefix: str
    ) -> None:
        registry = await make_registry(finished_ttl=timedelta(hours=1))

        await registry.add_run(Run(run_id="old", name="n", status=F, finished_at=ago(days=1)))

        assert await registry.get_run("old") is None
        assert await registry.count_runs() == dict.fromkeys(RunStatus, 0)
        left = {k for k in await keys_under(client, prefix) if not k.startswith(f"{prefix}op:")}
        assert left == {keys.schema}

    async def test_not_finished_runs_never_expire(
        self, make_registry: Factory, client: Any, keys: Keys
    ) -> None:
        registry = await make_registry(finished_ttl=0.001)
        await registry.add_run(Run(run_id="q", created_at=ago(days=9)))
        await registry.add_run(Run(run_id="r", status=R, created_at=ago(days=8)))

        assert await client.pttl(keys.run("q")) == -1
        assert [r.run_id for r in await registry.list_runs()] == ["r", "q"]
        assert await registry.count_runs() == {Q: 1, R: 1, C: 0, F: 0, X: 0}

    async def test_reader_skips_and_removes_dangling_entries(
        self, registry: RedisRunRegistry, client: Any, keys: Keys
    ) -> None:
        # A registry without finished_ttl may meet runs another registry let expire.
        for i in range(6):
            await registry.add_run(Run(run_id=f"r{i}", name="n", created_at=at(i)))
        await client.delete(keys.run("r4"), keys.run("r2"))

        page = await registry.list_runs(name="n", limit=3)
        rest = await registry.list_runs(name="n", limit=3, offset=3)

        assert [r.run_id for r in page] == ["r5", "r3", "r1"]
        assert [r.run_id for r in rest] == ["r0"]
        assert await client.zrange(keys.name("n"), 0, -1) == ["r0", "r1", "r3", "r5"]
        assert await client.zscore(keys.created, "r4") is None

    @pytest.mark.parametrize("bad", [0, -1, timedelta(0), float("nan")])
    def test_bad_ttl(self, bad: Any) -> None:
        with pytest.raises(ValueError, match="finished_ttl"):
            RedisRunRegistry(redis_url(), finished_ttl=bad)

    def test_ttl_type(self) -> None:
        with pytest.raises(TypeError, match="finished_ttl"):
            RedisRunRegistry(redis_url(), finished_ttl="1h")  # type: ignore[arg-type]


class TestCleanupAtScale:
    """cleanup_old_runs walks the finished index in chunks, with keep and statuses."""

    async def test_many_runs_in_chunks(
        self, registry: RedisRunRegistry, client: Any, keys: Keys
    ) -> None:
        # 700 failed and 700 completed runs, interleaved by age, all older than a day
        writes = []
        for i in range(1400):
            status = F if i % 2 else C
            run = Run(run_id=f"r{i:04}", status=status, finished_at=ago(days=2, seconds=i))
            writes.append(RunWrite(run.run_id, run=run))
        assert all(await registry.write_batch(writes))
        await registry.add_run(Run(run_id="recent", status=C, finished_at=ago(minutes=1)))

        deleted = await registry.cleanup_old_runs(
            older_than=timedelta(days=1), statuses=[C], keep=10
        )

        # keep=10 spares "recent" and the 9 newest old completed runs
        assert deleted == 700 - 9
        assert await registry.count_runs() == {Q: 0, R: 0, C: 10, F: 700, X: 0}
        kept = await registry.list_runs(status=C, limit=100)
        assert {r.run_id for r in kept} == {"recent"} | {f"r{i:04}" for i in range(0, 18, 2)}
        assert await client.zcard(keys.finished) == 710

        assert await registry.cleanup_old_runs(older_than=timedelta(days=1)) == 709
        assert [r.run_id for r in await registry.list_runs()] == ["recent"]


HOSTILE = [
    "a:b:c",
    "*",
    "?",
    "[a-z]",
    "]",
    "back\\slash",
    "it's",
    'say "hi"',
    "'; DROP TABLE runs; --",
    "return redis.call('FLUSHALL')",
    "x') redis.call('FLUSHALL') --",
    "name=value",
    "{}",
    "%s %d",
    "tab\tnew\nline",
    "ünïcödé ✓ 中文",
    "🚀🔥" * 2,
    "k" * 255,
    "🚀" * 255,
]


class TestHostileInput:
    """Metacharacters are data: stored and found verbatim, touching no other key."""

    @pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
    async def test_stored_and_found_verbatim(
        self, registry: RedisRunRegistry, client: Any, prefix: str, text: str
    ) -> None:
        sentinel = f"rt-test-sentinel:{uuid4().hex}"
        await client.set(sentinel, "intact")
        try:
            decoy = Run(run_id="decoy", name="decoy", group="decoy", tags={"k": "v"})
            await registry.add_run(decoy)
            run = Run(
                run_id=text, name=text, group=text, tags={text: text, "k": text}, created_at=at(1)
            )
            await registry.add_run(run)
            await registry.append_output(text, [(text[:64], text)])

            assert await registry.get_run(text) == run
            for found in (
                await registry.list_runs(name=text),
                await registry.list_runs(group=text),
                await registry.list_runs(tags={text: text}),
                await registry.list_runs(tags={"k": text}, name=text, group=text, status="queued"),
            ):
                assert found == [run]
            assert (await registry.count_runs(name=text))[Q] == 1
            assert [c.text for c in await registry.get_output(text)] == [text]
            moved = await registry.transition(text, R, owner=text)
            assert moved is not None
            assert moved.owner == text
            assert await registry.get_run("decoy") == decoy
            assert await client.get(sentinel) == "intact"
            assert all(k.startswith(prefix) for k in await keys_under(client, prefix))
        finally:
            await client.delete(sentinel)

    async def test_index_names_cannot_collide(self, registry: RedisRunRegistry) -> None:
        await registry.add_run(Run(run_id="1", tags={"a=b": "c"}))
        await registry.add_run(Run(run_id="2", tags={"a": "b=c"}))
        await registry.add_run(Run(run_id="3", name="x", group="y"))
        await registry.add_run(Run(run_id="4", name="y", group="x"))
        await registry.add_run(Run(run_id="5", name="1:x"))
        await registry.add_run(Run(run_id="6", name="x:1"))

        assert [r.run_id for r in await registry.list_runs(tags={"a=b": "c"})] == ["1"]
        assert [r.run_id for r in await registry.list_runs(tags={"a": "b=c"})] == ["2"]
        assert [r.run_id for r in await registry.list_runs(name="x")] == ["3"]
        assert [r.run_id for r in await registry.list_runs(group="x")] == ["4"]
        assert [r.run_id for r in await registry.list_runs(name="1:x")] == ["5"]


class TestErrors:
    """Outages become RegistryUnavailableError; pool exhaustion and bugs do not."""

    @pytest.mark.parametrize(
        "call",
        [
            lambda r: r.get_run("x"),
            lambda r: r.add_run(Run()),
            lambda r: r.transition("x", RunStatus.RUNNING),
            lambda r: r.list_runs(),
            lambda r: r.count_runs(),
            lambda r: r.append_output("x", [("stdout", "x")]),
            lambda r: r.cleanup_old_runs(older_than=timedelta(0)),
            lambda r: r.write_batch([RunWrite("x", changes={"progress": 0.5})]),
        ],
        ids=["get", "add", "transition", "list", "count", "append", "cleanup", "batch"],
    )
    async def test_unreachable_server(self, call: Callable[[Any], Awaitable[Any]]) -> None:
        async with RedisRunRegistry(UNREACHABLE) as registry:
            started = time.monotonic()
            with pytest.raises(RegistryUnavailableError) as info:
                await call(registry)

        assert time.monotonic() - started < 10
        assert info.value.backend == "redis"
        assert "redis" in str(info.value)
        assert "127.0.0.1:1" in str(info.value)
        assert "hunter2" not in str(info.value)
        assert isinstance(info.value.__cause__, redis_exceptions.ConnectionError)

    async def test_pool_exhaustion_is_not_an_outage(self, prefix: str) -> None:
        pool = redis_asyncio.ConnectionPool.from_url(redis_url(), max_connections=1)
        client = redis_asyncio.Redis(connection_pool=pool)
        registry = RedisRunRegistry(client, prefix=prefix)
        held = await pool.get_connection()
        try:
            # MaxConnectionsError on redis-py 6, a bare ConnectionError on 5
            with pytest.raises(redis_exceptions.ConnectionError, match="Too many") as info:
                await registry.get_run("x")
            assert not isinstance(info.value, RegistryUnavailableError)
        finally:
            await pool.release(held)
        assert await registry.get_run("x") is None
        await registry.aclose()
        await client.aclose()
        await pool.aclose()  # a pool passed in is not closed by its client

    async def test_blocking_pool_timeout_is_not_an_outage(self, prefix: str) -> None:
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            redis_url(), max_connections=1, timeout=0.05
        )
        client = redis_asyncio.Redis(connection_pool=pool)
        registry = RedisRunRegistry(client, prefix=prefix)
        held = await pool.get_connection()
        try:
            with pytest.raises(redis_exceptions.ConnectionError, match="No connection") as info:
                await registry.get_run("x")
            assert not isinstance(info.value, RegistryUnavailableError)
        finally:
            await pool.release(held)
        await client.aclose()
        await pool.aclose()

    async def test_transport_reset_leaking_as_type_error(
        self, registry: RedisRunRegistry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # redis-py issue 4287: on CPython 3.12+ a write on a connection the peer reset
        # raises TypeError from inside asyncio. Build that traceback shape for real.
        in_asyncio: dict[str, Any] = {"__name__": "asyncio.selector_events"}
        exec(
            "def writelines():\n    raise TypeError(\"'NoneType' object is not callable\")\n",
            in_asyncio,
        )
        in_redis: dict[str, Any] = {
            "__name__": "redis.asyncio.connection",
            "writelines": in_asyncio["writelines"],
        }
        exec("async def execute_command(*args, **options):\n    writelines()\n", in_redis)
        monkeypatch.setattr(registry._client, "execute_command", in_redis["execute_command"])

        with pytest.raises(RegistryUnavailableError) as info:
            await registry.get_run("x")

        assert isinstance(info.value.__cause__, TypeError)

    async def test_our_own_type_errors_are_not_outages(
        self, registry: RedisRunRegistry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def broken(*args: Any, **options: Any) -> Any:
            raise TypeError("a bug")

        monkeypatch.setattr(registry._client, "execute_command", broken)

        with pytest.raises(TypeError, match="a bug"):
            await registry.get_run("x")

    async def test_killed_connection_is_recovered(
        self, registry: RedisRunRegistry, client: Any
    ) -> None:
        await registry.add_run(Run(run_id="r1"))
        connection_id = await registry._client.client_id()

        assert await client.client_kill_filter(_id=connection_id) == 1

        assert await registry.transition("r1", R) is not None
        assert (await registry.count_runs())[R] == 1

    async def test_duplicate_and_missing(self, registry: RedisRunRegistry) -> None:
        await registry.add_run(Run(run_id="r1"))

        with pytest.raises(DuplicateRunError):
            await registry.add_run(Run(run_id="r1"))
        with pytest.raises(RunNotFoundError):
            await registry.update_run("nope", progress=0.5)
        with pytest.raises(RunNotFoundError):
            await registry.append_output("nope", [])


class TestConstruction:
    """URLs, clients, repr and closing."""

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
            ("redis://app:s3cret@127.0.0.1:6379/2", "redis://app:***@127.0.0.1:6379/2"),
            ("rediss://:s3cret@example.com/0", "rediss://:***@example.com/0"),
            ("redis://127.0.0.1/0?password=s3cret", "redis://127.0.0.1/0?password=%2A%2A%2A"),
        ],
    )
    async def test_repr_hides_password(self, url: str, shown: str) -> None:
        registry = RedisRunRegistry(url)

        assert repr(registry) == f"<RedisRunRegistry {shown} prefix='runtrack:'>"
        assert "s3cret" not in repr(registry)
        await registry.aclose()

    async def test_repr_of_a_client(self) -> None:
        client = redis_asyncio.Redis(host="127.0.0.1", port=6379, db=3, password="s3cret")
        registry = RedisRunRegistry(client, prefix="p:")

        assert repr(registry) == "<RedisRunRegistry redis://:***@127.0.0.1:6379/3 prefix='p:'>"
        await client.aclose()

    @pytest.mark.parametrize(
        "options",
        [{"decode_responses": True}, {"protocol": 3}, {"protocol": 3, "decode_responses": True}],
        ids=["decoded", "resp3", "resp3-decoded"],
    )
    async def test_any_client_settings(self, prefix: str, options: dict[str, Any]) -> None:
        client = redis_asyncio.Redis.from_url(redis_url(), **options)
        async with RedisRunRegistry(client, prefix=prefix, finished_ttl=3600) as registry:
            run = Run(run_id="r1", name="n", tags={"a": "ü"}, parameters={"x": [1.5]})
            await registry.add_run(run)
            assert await registry.get_run("r1") == run
            running = await registry.transition("r1", R)
            assert running is not None
            assert await registry.update_run("r1", progress=0.5) == running.model_copy(
                update={"progress": 0.5}
            )
            await registry.append_output("r1", [("stdout", "ü")])
            assert [c.text for c in await registry.get_output("r1")] == ["ü"]
            assert await registry.write_batch([RunWrite("r1", to=C, expect=frozenset({R}))]) == [
                True
            ]
            assert [r.run_id for r in await registry.list_runs(tags={"a": "ü"})] == ["r1"]
            assert (await registry.count_runs(name="n"))[C] == 1
            assert await registry.cleanup_old_runs(older_than=timedelta(0)) == 1
        await client.aclose()

    async def test_registry_from_url(self) -> None:
        registry = registry_from_url(redis_url())

        assert isinstance(registry, RedisRunRegistry)
        assert registry.backend == "redis"
        assert registry.prefix == "runtrack:"
        assert registry.finished_ttl is None
        await registry.aclose()

    async def test_given_client_stays_open(self, prefix: str, client: Any) -> None:
        async with RedisRunRegistry(client, prefix=prefix) as registry:
            await registry.add_run(Run(run_id="r1"))
        await registry.aclose()

        assert await client.exists(Keys(prefix).run("r1")) == 1

    async def test_own_client_closes_twice(self, registry: RedisRunRegistry) -> None:
        await registry.get_run("x")

        await registry.aclose()
        await registry.aclose()

    def test_bad_arguments(self) -> None:
        with pytest.raises(TypeError, match="redis"):
            RedisRunRegistry(6379)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="prefix"):
            RedisRunRegistry(redis_url(), prefix=None)  # type: ignore[arg-type]

    def test_import_runtrack_does_not_import_redis(self) -> None:
        code = (
            "import sys, runtrack; "
            "assert 'runtrack.registry.redis' not in sys.modules; "
            "assert 'redis' not in sys.modules"
        )
        subprocess.run([sys.executable, "-c", code], check=True)


# Added for issue 8 at the end of the module, to keep merges with other changes simple.
from urllib.parse import urlsplit, urlunsplit  # noqa: E402

from runtrack import RegistryConfigError  # noqa: E402


class TestConfigErrors:
    """A refused login or a database out of range is a RegistryConfigError, not an outage."""

    def with_auth(self, auth: str, db: str = "0") -> str:
        parts = urlsplit(redis_url())
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, f"{auth}@{host}", f"/{db}", "", ""))

    async def expect_config_error(self, url: str) -> RegistryConfigError:
        async with redis_prefix() as prefix, RedisRunRegistry(url, prefix=prefix) as registry:
            errors = []
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: registry.get_run("x"),
                lambda: registry.add_run(Run()),
            ]
            for call in calls:
                with pytest.raises(RegistryConfigError) as info:
                    await call()
                errors.append(info.value)
        assert all(error.backend == "redis" for error in errors)
        assert "check that the server is running" not in str(errors[0])
        return errors[0]

    async def test_wrong_user_or_password(self) -> None:
        error = await self.expect_config_error(self.with_auth("no-such-user-rt:wrong-pw-rt"))

        assert "invalid username-password pair" in error.problem
        assert "user name and password" in error.fix
        assert "wrong-pw-rt" not in str(error)

    async def test_database_out_of_range(self) -> None:
        error = await self.expect_config_error(self.with_auth("", db="4999"))

        assert "DB index is out of range" in error.problem
        assert "databases" in error.fix

    @pytest.mark.parametrize(
        "url", ["redis://localhost/abc", "redis://localhost:6379/0?db=x", "rediss://h/1/2"]
    )
    def test_database_not_a_number(self, url: str) -> None:
        with pytest.raises(ValueError, match="database of a Redis URL is a number"):
            RedisRunRegistry(url)
