"""Cancels pushed to the owner (`Notifying`): PostgreSQL LISTEN/NOTIFY and Redis pub/sub.

The owner runs in a child process with a ``poll_interval`` so long that only a pushed
notification can stop its run in time; another manager in the test process cancels it.
A listener whose connection is cut loses what is sent meanwhile, which the next poll makes
up, and it listens again. Registries with other prefixes hear nothing; announcements of new
work reach every listener. Memory, SQLite and MariaDB still learn of cancels by polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest

from child_owner import CHILD_START, OWNER_BACKENDS, Child, child_script, owner_process
from cli_helpers import cli_env, run_cli
from helpers import SAFETY, wait_until
from redis_registries import redis_prefix, redis_url
from registries import memory_registry
from runtrack import BackgroundTaskManager, Run, RunRegistry, RunStatus
from runtrack.registry.base import Notifying
from sql_registries import mysql_registry, postgres_url, sql_registry, sqlite_registry
from tcp_proxy import tcp_proxy

_CHILD = child_script(
    """
    kind, url, prefix, poll, listen_url, *names = sys.argv[1:]

    def registry():
        if kind == "sql":
            from runtrack.registry.sql import SQLRunRegistry
            registry = SQLRunRegistry(url, table_prefix=prefix)
            if listen_url != "-":
                from sqlalchemy.ext.asyncio import create_async_engine
                registry._listen_engine = create_async_engine(listen_url)
            return registry
        import redis.asyncio
        from runtrack.registry.redis import RedisRunRegistry
        registry = RedisRunRegistry(url, prefix=prefix)
        if listen_url != "-":
            registry._listen_client = redis.asyncio.Redis.from_url(listen_url)
        return registry

    def say(**item):
        print(json.dumps(item), flush=True)

    async def body(label):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            say(cancelled=label)
            raise

    async def main():
        manager = BackgroundTaskManager(registry(), owner="A", poll_interval=float(poll))
        running = asyncio.Event()

        def seen(event):
            if event.status is RunStatus.RUNNING and len(manager._jobs) == len(names):
                running.set()

        manager.add_listener(seen)
        async with manager:
            ids = {}
            for name in names:
                ids[name] = (await manager.submit(body, name, name=name)).run_id
            await running.wait()
            await manager._writer.flush()
            presence = manager._heartbeat.presence
            while presence._notifications._listener is None:
                await asyncio.sleep(0.01)
            say(ready=ids)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def _owner(
    args: list[str], poll: float, listen_url: str, *names: str
) -> AbstractAsyncContextManager[Child]:
    return owner_process(_CHILD, *args, str(poll), listen_url, *names)


PUSHING = OWNER_BACKENDS  # both push cancels (`Notifying`)


def _via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 6379 if parts.scheme.startswith("redis") else 5432
    return parts.hostname or "127.0.0.1", parts.port or default


@pytest.mark.parametrize("backend", sorted(PUSHING))
async def test_a_cancel_reaches_the_owner_without_polling(backend: str) -> None:
    async with PUSHING[backend]() as (registry, args), _owner(args, 3600, "-", "one") as child:
        ids = (await child.until(lambda i: "ready" in i, CHILD_START))["ready"]
        async with BackgroundTaskManager(registry, owner="B") as other:
            assert await other.cancel_task(ids["one"]) is True
        # Polled only after an hour: the push stopped it.
        await child.until(lambda i: i.get("cancelled") == "one")


@pytest.mark.parametrize("backend", sorted(PUSHING))
async def test_a_cut_listener_is_made_up_by_polling_then_listens_again(backend: str) -> None:
    async with PUSHING[backend]() as (registry, args):
        url = args[1]
        async with (
            tcp_proxy(*_address(url)) as listen_proxy,
            tcp_proxy(*_address(url)) as registry_proxy,
        ):
            routed = [args[0], _via(url, registry_proxy.port), args[2]]
            async with _owner(routed, 0.2, _via(url, listen_proxy.port), "one", "two") as child:
                ids = (await child.until(lambda i: "ready" in i, CHILD_START))["ready"]
                other = BackgroundTaskManager(registry, owner="B")
                async with other:
                    # The listener's connection is cut and stays so: only a poll can stop it.
                    listen_proxy.cut()
                    await child.until(lambda i: i.get("event") == "notifications_failed")
                    assert await other.cancel_task(ids["one"]) is True
                    await child.until(lambda i: i.get("cancelled") == "one")

                    # It listens again; now the polls fail (the registry is cut off from
                    # the owner): only a push can stop the second run.
                    listen_proxy.restore()
                    await child.until(lambda i: i.get("event") == "notifications_recovered")
                    registry_proxy.cut()
                    assert await other.cancel_task(ids["two"]) is True
                    await child.until(lambda i: i.get("cancelled") == "two")
                    registry_proxy.restore()


async def _listen(
    registry: Notifying, owner: str, heard: list[tuple[str, str]]
) -> AbstractAsyncContextManager[object]:
    @asynccontextmanager
    async def listening() -> AsyncIterator[object]:
        listener = await registry.listen(
            owner,
            on_cancel=lambda run_id: heard.append(("cancel", run_id)),
            on_new_work=lambda task: heard.append(("work", task)),
        )
        try:
            yield listener
        finally:
            await listener.aclose()

    return listening()


@asynccontextmanager
async def _two_registries(backend: str) -> AsyncIterator[tuple[RunRegistry, RunRegistry]]:
    if backend == "postgresql":
        async with sql_registry(postgres_url()) as one, sql_registry(postgres_url()) as two:
            yield one, two
        return
    from runtrack.registry.redis import RedisRunRegistry

    async with (
        redis_prefix() as p1,
        redis_prefix() as p2,
        RedisRunRegistry(redis_url(), prefix=p1) as one,
        RedisRunRegistry(redis_url(), prefix=p2) as two,
    ):
        yield one, two


async def _cancel_owned(registry: RunRegistry, run_id: str, owner: str) -> None:
    await registry.add_run(Run(run_id=run_id, name="n", owner=owner))
    assert await registry.transition(run_id, RunStatus.CANCELLED) is not None


@pytest.mark.parametrize("backend", sorted(PUSHING))
async def test_registries_with_other_prefixes_hear_nothing(backend: str) -> None:
    async with _two_registries(backend) as (one, two):
        assert isinstance(one, Notifying)
        assert isinstance(two, Notifying)
        heard: list[tuple[str, str]] = []
        async with await _listen(one, "A", heard):
            # The other prefix first: one server delivers in order, so once the last
            # notification of ``one`` is heard, any of ``two`` would have been too.
            await _cancel_owned(two, "r-two", "A")
            await two.announce_new_work(["task-two"])
            await _cancel_owned(one, "r-other-owner", "Z")
            await _cancel_owned(one, "r-one", "A")
            await one.announce_new_work(["task-one"])
            await wait_until(lambda: ("work", "task-one") in heard)
        assert heard == [("cancel", "r-one"), ("work", "task-one")]


@pytest.mark.parametrize("backend", sorted(PUSHING))
async def test_new_work_reaches_every_listener_once_per_task(backend: str) -> None:
    async with PUSHING[backend]() as (registry, _):
        assert isinstance(registry, Notifying)
        first: list[tuple[str, str]] = []
        second: list[tuple[str, str]] = []
        async with await _listen(registry, "A", first), await _listen(registry, "B", second):
            await registry.announce_new_work(["a", "b", "a"])
            await registry.announce_new_work([])
            await registry.announce_new_work(["c"])
            await wait_until(lambda: ("work", "c") in first and ("work", "c") in second)
        assert first == second == [("work", "a"), ("work", "b"), ("work", "c")]
        with pytest.raises(ValueError, match="too long to announce"):
            await registry.announce_new_work(["x" * 8000])


@pytest.mark.parametrize("backend", sorted(PUSHING))
async def test_the_manager_hands_new_work_to_its_hook(backend: str) -> None:
    async with PUSHING[backend]() as (registry, _):
        assert isinstance(registry, Notifying)
        async with BackgroundTaskManager(registry, owner="A") as manager:
            presence = manager._heartbeat.presence
            assert presence is not None
            heard: list[str] = []
            presence.on_new_work = heard.append
            notifications = presence._notifications
            assert notifications is not None
            await wait_until(lambda: notifications._listener is not None)
            await registry.announce_new_work(["durable"])
            await wait_until(lambda: heard == ["durable"])
        assert notifications._listener is None  # closed at shutdown


POLLING: dict[str, Callable[[], AbstractAsyncContextManager[RunRegistry]]] = {
    "memory": memory_registry,
    "sqlite": sqlite_registry,
    "mariadb": mysql_registry,
}


@pytest.mark.parametrize("backend", sorted(POLLING))
async def test_without_push_a_cancel_reaches_the_owner_by_polling(backend: str) -> None:
    async with POLLING[backend]() as registry:
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def body() -> None:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        owner = BackgroundTaskManager(registry, owner="A", poll_interval=0.1)
        async with owner, BackgroundTaskManager(registry, owner="B") as other:
            run = await owner.submit(body, name="polled")
            async with asyncio.timeout(SAFETY):
                await started.wait()
            await owner._writer.flush()
            assert await other.cancel_task(run.run_id) is True
            async with asyncio.timeout(SAFETY):
                await cancelled.wait()


def _second_registry(kind: str, url: str, prefix: str) -> RunRegistry:
    """Another registry object on the same tables / keys: its own connections and listener."""
    if kind == "sql":
        from runtrack.registry.sql import SQLRunRegistry

        return SQLRunRegistry(url, table_prefix=prefix)
    from runtrack.registry.redis import RedisRunRegistry

    return RedisRunRegistry(url, prefix=prefix)


async def _listening_idle(worker: BackgroundTaskManager) -> None:
    """Wait until ``worker`` listens for announcements and its first claim has passed."""
    presence = worker._heartbeat.presence
    assert presence is not None
    assert presence._notifications is not None
    notifications = presence._notifications
    await wait_until(lambda: notifications._listener is not None)
    # Let the worker's first claim (at start, with nothing queued) pass.
    await wait_until(lambda: worker._claims.active)


@pytest.mark.parametrize("backend", sorted(PUSHING))
async def test_durable_work_is_announced_to_idle_managers(backend: str) -> None:
    """A submit on one registry object wakes an idle manager on another: no poll could.

    The worker polls once an hour, so only the announcement (NOTIFY / PUBLISH) sent by the
    submitting manager, which does not run the task itself, can make it claim the run.
    """
    async with PUSHING[backend]() as (registry, (kind, url, prefix)):
        done = asyncio.Event()

        async def work(n: int) -> int:
            done.set()
            return n * 2

        async with (
            _second_registry(kind, url, prefix) as other,
            BackgroundTaskManager(other, owner="worker", poll_interval=3600) as worker,
            BackgroundTaskManager(registry, owner="web", poll_interval=3600) as web,
        ):
            worker.task(name="double")(work)
            await _listening_idle(worker)
            submitter = web.task(name="double", run_here=False)(work)  # web runs none
            run = await submitter.submit(21)
            async with asyncio.timeout(SAFETY):
                await done.wait()
            finished = await worker.wait(run.run_id, timeout=SAFETY)
        assert finished.status is RunStatus.COMPLETED
        assert finished.result == 42
        assert finished.owner == "worker"


def _recording_task() -> tuple[Callable[[int], Awaitable[int]], list[int], asyncio.Event]:
    """A task that records its arguments, the list they go to, and an event set by its 2nd run."""
    ran: list[int] = []
    second = asyncio.Event()

    async def work(n: int) -> int:
        ran.append(n)
        if len(ran) == 2:
            second.set()
        return n

    return work, ran, second


@pytest.mark.parametrize("backend", sorted(PUSHING))
async def test_a_requeue_is_announced_to_idle_managers(backend: str) -> None:
    """``manager.requeue`` tells the other managers at once, as ``submit`` does."""
    async with PUSHING[backend]() as (registry, (kind, url, prefix)):
        work, ran, second = _recording_task()
        async with (
            _second_registry(kind, url, prefix) as other,
            BackgroundTaskManager(other, owner="worker", poll_interval=3600) as worker,
            BackgroundTaskManager(registry, owner="web", poll_interval=3600) as web,
        ):
            worker.task(name="again")(work)
            await _listening_idle(worker)
            run = await web.task(name="again", run_here=False)(work).submit(7)
            await worker.wait(run.run_id, timeout=SAFETY)
            # Idle again, polling once an hour: only the requeue's announcement wakes it.
            again = await web.requeue(run.run_id)
            async with asyncio.timeout(SAFETY):
                await second.wait()
            finished = await worker.wait(again.run_id, timeout=SAFETY)
        assert (finished.status, finished.owner, finished.requeued_from) == (
            RunStatus.COMPLETED,
            "worker",
            run.run_id,
        )
        assert ran == [7, 7]


@pytest.mark.parametrize("backend", sorted(PUSHING))
async def test_a_requeue_by_the_cli_is_announced_to_idle_managers(backend: str) -> None:
    """``runtrack requeue`` wakes an idle manager at once, as ``manager.requeue`` does."""
    async with PUSHING[backend]() as (registry, (_, url, prefix)):
        work, ran, second = _recording_task()
        async with BackgroundTaskManager(registry, owner="worker", poll_interval=3600) as worker:
            task = worker.task(name="again")(work)
            await _listening_idle(worker)
            run = await task.submit(5)
            await worker.wait(run.run_id, timeout=SAFETY)
            # Idle again, polling once an hour: only the command's announcement wakes it.
            result = await run_cli(cli_env(url, prefix), "requeue", run.run_id, "--json")
            assert result.code == 0, result.err
            again = Run.model_validate_json(result.out)
            async with asyncio.timeout(SAFETY):
                await second.wait()
            finished = await worker.wait(again.run_id, timeout=SAFETY)
        assert (finished.status, finished.requeued_from) == (RunStatus.COMPLETED, run.run_id)
        assert ran == [5, 5]
