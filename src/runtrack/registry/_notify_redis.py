"""`Notifying` for `RedisRunRegistry`: pub/sub.

Channels, built from the registry's prefix as its keys are (see ``_redis_layout``)::

    {prefix}chan:cancel:{n}:{owner}   payload: the run_id of a run of ``owner`` recorded
                                      CANCELLED (published right after the write script)
    {prefix}chan:work                 payload: a task name with new work queued

Registries with other prefixes hear nothing. Each listener holds one pub/sub connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Final

from redis.asyncio.cluster import RedisCluster

from runtrack._logging import get_logger
from runtrack._status import RunStatus
from runtrack.registry._notifying import (
    InertListener,
    ListenerKeeper,
    NotificationListener,
    check_task_names,
)
from runtrack.registry._redis_host import RedisHost
from runtrack.registry._redis_layout import len_prefixed

if TYPE_CHECKING:
    from runtrack._models import Run
    from runtrack.registry._redis_client import Client

__all__ = ["CHAN_CANCEL", "CHAN_WORK", "RedisNotifying"]

CHAN_CANCEL: Final = "chan:cancel:"
CHAN_WORK: Final = "chan:work"
_log = get_logger(component="notifications")

#: Seconds between PINGs on a quiet pub/sub connection (one the network dropped silently).
_PING_EVERY: Final = 10.0


class _RedisSession:
    """One pub/sub connection subscribed to a manager's channels."""

    def __init__(self, pubsub: Any, handlers: dict[str, Callable[[str], None]]) -> None:
        self._pubsub = pubsub
        self._handlers = handlers

    @classmethod
    async def open(
        cls, client: Client, handlers: dict[str, Callable[[str], None]]
    ) -> _RedisSession:
        if isinstance(client, RedisCluster):
            # A cluster's pub/sub picks its node from the slot map, which a new client has
            # not read yet: a KeyError on every attempt when listening is its first use.
            _ = await client.initialize()
        pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*handlers)
        except BaseException:
            await asyncio.shield(pubsub.aclose())
            raise
        return cls(pubsub, handlers)

    async def lost(self) -> None:
        """Deliver messages until the connection fails (redis-py retries it first)."""
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            message = await self._pubsub.get_message(timeout=_PING_EVERY)
            if message is None:
                if loop.time() - quiet_since >= _PING_EVERY:
                    await self._pubsub.ping()
                    quiet_since = loop.time()
                continue
            quiet_since = loop.time()
            if message.get("type") != "message":
                continue
            channel, data = message["channel"], message["data"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            if isinstance(data, bytes):
                data = data.decode("utf-8", "surrogatepass")
            handler = self._handlers.get(channel)
            if handler is not None:
                handler(data)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()


class RedisNotifying(ListenerKeeper, RedisHost):
    """`Notifying` for the Redis registry (mixed into `RedisRunRegistry`)."""

    #: Where listeners connect; None: the registry's own client (tests route it elsewhere).
    _listen_client: Client | None = None

    def _cancel_channel(self, owner: str) -> str:
        return self._prefix + CHAN_CANCEL + len_prefixed(owner)

    def _work_channel(self) -> str:
        return self._prefix + CHAN_WORK

    async def listen(
        self,
        owner: str,
        *,
        on_cancel: Callable[[str], None],
        on_new_work: Callable[[str], None],
    ) -> NotificationListener:
        """Subscribe to ``owner``'s cancels and to new work (see `Notifying`).

        On a Redis Cluster with redis-py older than 8 (whose asyncio cluster client has no
        pub/sub), the listener never calls back, with a warning: managers poll.
        """
        client = self._listen_client or self._client
        if isinstance(client, RedisCluster) and not hasattr(client, "pubsub"):
            _log.warning(
                "notifications_unavailable", backend="redis-cluster",
                detail="redis-py's asyncio cluster client has pub/sub from version 8: "
                "install redis>=8 for pushed cancels and new-work announcements; until "
                "then managers learn of them by polling (poll_interval)",
            )  # fmt: skip
            return InertListener()
        handlers = {self._cancel_channel(owner): on_cancel, self._work_channel(): on_new_work}

        async def open_session() -> _RedisSession:
            return await _RedisSession.open(client, handlers)

        where = f"redis SUBSCRIBE {', '.join(handlers)}"
        return await self._open_listener(open_session, where)

    async def announce_new_work(self, tasks: Collection[str]) -> None:
        """One ``PUBLISH`` per distinct task name, in one round trip (see `Notifying`)."""
        names = check_task_names(tasks)
        if not names:
            return
        channel = self._work_channel()
        if isinstance(self._client, RedisCluster):  # a cluster pipelines no PUBLISH
            async with self._guard():
                for name in names:
                    await self._client.publish(channel, name)
            return
        async with self._guard(), self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.publish(channel, name)  # type: ignore[unused-awaitable]
            await pipe.execute()

    async def _notify_cancelled(self, run: Run) -> None:
        """Right after the write script: tell ``run``'s owner it was cancelled.

        A failure is not the caller's: the run is recorded, and its owner polls.
        """
        if run.status is RunStatus.CANCELLED and run.owner:
            with contextlib.suppress(Exception):
                await self._client.publish(self._cancel_channel(run.owner), run.run_id)
