"""`RedisRunRegistry` on a Redis Cluster: hash-tagged prefixes, URLs, one slot, a manager.

The conformance suite runs on the cluster too (the ``redis-cluster`` registry of
``redis_registries.py``); these tests cover what only a cluster has. The cluster is the
session's throwaway 3-master cluster (``redis_cluster.py``, fixture ``redis_cluster_url``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from helpers import SAFETY, wait_until
from redis_registries import cluster_client, redis_cluster_registry
from runtrack import (
    BackgroundTaskManager,
    ManagerInfo,
    RegistryConfigError,
    RegistryUnavailableError,
    Run,
    RunStatus,
    registry_from_url,
)
from runtrack._models import utcnow

redis_cluster = pytest.importorskip("redis.asyncio.cluster")
redis_asyncio = pytest.importorskip("redis.asyncio")

from runtrack.registry._redis_layout import cluster_prefix, hash_tag  # noqa: E402
from runtrack.registry.redis import RedisRunRegistry  # noqa: E402


@pytest.mark.parametrize(
    ("prefix", "tag"),
    [
        ("runtrack:", None),
        ("{runtrack}:", "runtrack"),
        ("app:{tenant-1}:", "tenant-1"),
        ("{}:", None),
        ("a{b", None),
        ("a}{b}", "b"),
        ("{a}{b}", "a"),
    ],
)
def test_hash_tag_is_the_one_redis_hashes(prefix: str, tag: str | None) -> None:
    assert hash_tag(prefix) == tag


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("runtrack:", "{runtrack}:"),
        ("myapp", "{myapp}"),
        ("a::", "{a}::"),
        ("{runtrack}:", "{runtrack}:"),
        ("app:{t1}:", "app:{t1}:"),
    ],
)
def test_a_cluster_prefix_gets_a_hash_tag(given: str, used: str) -> None:
    assert cluster_prefix(given) == used
    assert hash_tag(cluster_prefix(given)) is not None


@pytest.mark.parametrize("prefix", ["", ":", "a{b", "{}:", "x}{"])
def test_a_prefix_that_cannot_pin_one_slot_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match=r"hash tag|some text"):
        cluster_prefix(prefix)
    with pytest.raises(ValueError, match="prefix"):
        RedisRunRegistry("redis+cluster://127.0.0.1:7000", prefix=prefix)


async def test_urls_of_a_cluster() -> None:
    registry = registry_from_url("redis+cluster://:hunter2@127.0.0.1:7000")
    assert isinstance(registry, RedisRunRegistry)
    assert registry.cluster
    assert registry.prefix == "{runtrack}:"
    assert "hunter2" not in repr(registry)
    assert repr(registry).startswith("<RedisRunRegistry redis+cluster://:***@127.0.0.1:7000")
    await registry.aclose()
    tls = registry_from_url("rediss+cluster://127.0.0.1:7000", prefix="{mine}:")
    assert isinstance(tls, RedisRunRegistry)
    assert tls.prefix == "{mine}:"
    await tls.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://127.0.0.1:7000/1", "database 0 only"),
        ("redis+cluster://127.0.0.1:7000?db=2", "database 0 only"),
        ("redis+cluster://127.0.0.1:7000/x", "is a number"),
        ("redis+cluster:///", "one node"),
    ],
)
def test_a_malformed_cluster_url_says_what_to_write(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        registry_from_url(url)
    assert "redis+cluster://host:7000" in str(caught.value)


async def test_a_standalone_prefix_is_kept_as_given() -> None:
    """Data written before clusters were supported stays where it was."""
    async with RedisRunRegistry("redis://127.0.0.1:6379/0") as registry:
        assert registry.prefix == "runtrack:"
        assert not registry.cluster
    async with RedisRunRegistry("redis://127.0.0.1:6379/0", prefix="{t}:") as registry:
        assert registry.prefix == "{t}:"


def test_unknown_scheme_message_names_the_cluster_form() -> None:
    with pytest.raises(ValueError, match=r"redis\+cluster://host:7000"):
        registry_from_url("nope://x")


async def test_an_unreachable_cluster_is_an_outage_without_the_password() -> None:
    registry = RedisRunRegistry("redis+cluster://:hunter2@127.0.0.1:1", prefix="{t}:")
    try:
        with pytest.raises(RegistryUnavailableError) as caught:
            await registry.get_run("x")
        assert "hunter2" not in str(caught.value)
    finally:
        await registry.aclose()


# -- on the session cluster ---------------------------------------------------------------


@pytest.fixture
async def registry(redis_cluster_url: str) -> AsyncIterator[RedisRunRegistry]:
    """A registry on the session cluster under a fresh hash-tagged prefix."""
    async with redis_cluster_registry() as registry:
        assert isinstance(registry, RedisRunRegistry)
        yield registry


async def test_a_client_passed_in_stays_open(redis_cluster_url: str) -> None:
    client = cluster_client()
    try:
        async with RedisRunRegistry(client, prefix="{open}:") as registry:
            assert registry.cluster
            assert repr(registry).startswith("<RedisRunRegistry redis+cluster://127.0.0.1:")
            assert await registry.get_run("none") is None
        assert await client.ping()
        await client.delete("{open}:schema")
    finally:
        await client.aclose()


async def test_a_plain_client_on_a_cluster_node_is_told_what_to_use(
    redis_cluster_url: str,
) -> None:
    """Only the node holding the prefix's slot answers a non-cluster client; the others
    reply MOVED, which is a configuration error naming the cluster URL form."""
    ports = await _node_ports()
    served, refused = 0, []
    for port in ports:
        client = redis_asyncio.Redis(host="127.0.0.1", port=port)
        registry = RedisRunRegistry(client, prefix="{plain}:")
        try:
            await registry.get_run("x")
            served += 1
        except RegistryConfigError as exc:
            refused.append(exc)
        finally:
            await client.aclose()
    assert served == 1
    assert len(refused) == 2
    for error in refused:
        assert "Redis Cluster" in error.problem
        assert "redis+cluster://" in error.fix
    client = cluster_client()
    try:
        await client.delete("{plain}:schema")
    finally:
        await client.aclose()


async def _node_ports() -> list[int]:
    client = cluster_client()
    try:
        _ = await client.initialize()
        return sorted({int(node.port) for node in client.get_primaries()})
    finally:
        await client.aclose()


async def test_every_key_of_a_registry_is_in_one_slot(registry: RedisRunRegistry) -> None:
    """Runs, indexes, output, managers, expiry and scratch keys all share the prefix's slot."""
    now = utcnow()
    for i in range(20):
        run = Run(
            name=f"job:{i % 3}",
            group=f"g{i % 2}",
            tags={"k": str(i % 4), "{x}": "}{"},
            owner="m1",
            status=RunStatus.RUNNING,
        )
        await registry.add_run(run)
        await registry.append_output(run.run_id, [("stdout", f"line {i}")])
        if i % 2:
            await registry.transition(run.run_id, RunStatus.CANCELLED, finished_at=now)
    await registry.register_manager(
        ManagerInfo(
            owner="m1",
            host="h",
            pid=1,
            started_at=now,
            heartbeat_at=now,
            lease_seconds=30,
            max_concurrency=None,
            running=0,
        )
    )
    assert len(await registry.list_runs(status=[RunStatus.RUNNING, RunStatus.CANCELLED])) == 20
    assert await registry.cancelled_runs("m1", now - timedelta(seconds=1))
    assert await registry.cleanup_old_runs(older_than=timedelta(0)) == 10
    client = cluster_client()
    try:
        keys = [key async for key in client.scan_iter(match=f"{registry.prefix}*")]
        assert len(keys) > 20
        assert {client.keyslot(key) for key in keys} == {client.keyslot(registry.prefix)}
    finally:
        await client.aclose()


async def test_a_manager_on_the_cluster(registry: RedisRunRegistry) -> None:
    """start_task, submit, cancel, wait, presence and a dead owner's sweep on a cluster."""
    release = asyncio.Event()

    async def job(value: int) -> int:
        await release.wait()
        return value * 2

    running = asyncio.Event()

    async def forever() -> None:
        running.set()
        await asyncio.Event().wait()

    # A dead manager: registered long ago, one RUNNING run, never heard of again.
    long_ago = utcnow() - timedelta(hours=1)
    await registry.register_manager(
        ManagerInfo(
            owner="dead",
            host="h",
            pid=1,
            started_at=long_ago,
            heartbeat_at=long_ago,
            lease_seconds=1,
            max_concurrency=None,
            running=1,
        )
    )
    orphan = Run(name="orphan", owner="dead", status=RunStatus.RUNNING, started_at=long_ago)
    await registry.add_run(orphan)

    async with asyncio.timeout(SAFETY):
        async with BackgroundTaskManager(
            registry, owner="live", heartbeat_interval=0.05, lease=5, poll_interval=0.05
        ) as manager:
            started = manager.start_task(Run(name="started"), job(1))
            submitted = await manager.submit(job, 2, name="submitted")
            assert (await registry.get_run(submitted.run_id)) is not None
            doomed = manager.start_task(Run(name="doomed"), forever())
            await running.wait()
            assert await manager.cancel_task(doomed)
            release.set()
            assert (await manager.wait(started)).result == 2
            assert (await manager.wait(submitted.run_id)).result == 4
            assert (await manager.wait(doomed)).status is RunStatus.CANCELLED

            # Presence: the live manager's row, its heartbeat moving on; the dead one swept.
            first = await _manager_row(registry, "live")

            async def beat_moved() -> bool:
                return (await _manager_row(registry, "live")).heartbeat_at > first.heartbeat_at

            async def orphan_swept() -> bool:
                return await _status(registry, orphan.run_id) == RunStatus.FAILED

            await _eventually(beat_moved)
            await _eventually(orphan_swept)
            swept = await registry.get_run(orphan.run_id)
            assert swept is not None
            assert swept.error_type == "RunInterrupted"
            assert "dead" not in {info.owner for info in await registry.list_managers()}
    assert await registry.list_managers() == []


async def test_a_listener_on_a_new_cluster_client_hears_work_and_cancels(
    registry: RedisRunRegistry, redis_cluster_url: str
) -> None:
    """Listening is a new client's first command: pub/sub needs the slot map read first."""
    heard: list[tuple[str, str]] = []
    async with RedisRunRegistry(redis_cluster_url, prefix=registry.prefix) as fresh:
        listener = await fresh.listen(
            "A",
            on_cancel=lambda run_id: heard.append(("cancel", run_id)),
            on_new_work=lambda task: heard.append(("work", task)),
        )
        try:
            await registry.announce_new_work(["t1", "t2"])
            await registry.add_run(Run(run_id="r1", name="n", owner="A"))
            assert await registry.transition("r1", RunStatus.CANCELLED) is not None
            await wait_until(lambda: len(heard) == 3)
        finally:
            await listener.aclose()
    assert heard == [("work", "t1"), ("work", "t2"), ("cancel", "r1")]


async def test_without_async_cluster_pubsub_managers_poll(
    registry: RedisRunRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py before 8 has no pub/sub on its asyncio cluster client: one warning, then
    cancels reach the owner by its poll, with no listener failing over and over."""
    monkeypatch.delattr(redis_cluster.RedisCluster, "pubsub")
    started = asyncio.Event()

    async def wait_forever() -> None:
        started.set()
        await asyncio.Event().wait()

    with capture_logs() as logs:
        async with BackgroundTaskManager(registry, owner="A", poll_interval=0.05) as manager:
            run = await manager.submit(wait_forever(), name="waits")
            async with asyncio.timeout(SAFETY):
                await started.wait()
            assert await registry.transition(run.run_id, RunStatus.CANCELLED) is not None
            ended = await manager.wait(run.run_id, timeout=SAFETY)
    events = [entry["event"] for entry in logs if entry["log_level"] == "warning"]
    assert ended.status is RunStatus.CANCELLED
    assert events == ["notifications_unavailable"]


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll an async condition until it holds (the test's own timeout bounds it)."""
    while True:
        if await check():
            return
        await asyncio.sleep(0.01)


async def _status(registry: RedisRunRegistry, run_id: str) -> RunStatus | None:
    run = await registry.get_run(run_id)
    return None if run is None else run.status


async def _manager_row(registry: RedisRunRegistry, owner: str) -> ManagerInfo:
    while True:
        rows = {info.owner: info for info in await registry.list_managers()}
        if owner in rows:
            return rows[owner]
        await asyncio.sleep(0.01)
