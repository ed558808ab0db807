"""`RedisRunRegistry`: runs in Redis, shared by every process that uses the same prefix.

Needs the ``redis`` extra (``pip install 'runtrack[redis]'``). The key layout is described
in ``runtrack.registry._redis_layout`` and ``docs/backends/redis.md``, the Lua scripts in the
``_redis_prelude`` and ``_redis_scripts_*`` modules; the client (standalone Redis or Redis
Cluster) is built in ``_redis_client``.

This module holds the registry's setup and its run reads and writes; the rest is mixed
in, one concept a module, over the state declared in ``_redis_host``: how a run is stored
(``_redis_codec``), what failures mean (``_redis_errors``), output (``_redis_output``),
retention (``_redis_retention``), managers, claims, idempotency keys and notifications.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Self, cast

import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from runtrack._exceptions import DuplicateRunError, RunNotFoundError
from runtrack._models import Run
from runtrack._status import RunStatus, check_transition, normalize_statuses
from runtrack.registry import _redis_layout as layout
from runtrack.registry import _redis_scripts_read as read_scripts
from runtrack.registry import _redis_scripts_write as write_scripts
from runtrack.registry._notify_redis import RedisNotifying
from runtrack.registry._redis_claims import RedisClaims
from runtrack.registry._redis_client import client_from_url, describe_client, is_cluster
from runtrack.registry._redis_client import pairs as _pairs
from runtrack.registry._redis_client import text as _text
from runtrack.registry._redis_codec import decode_run, to_json, write_spec
from runtrack.registry._redis_errors import BACKEND, RedisErrors
from runtrack.registry._redis_idempotency import RedisIdempotency
from runtrack.registry._redis_managers import RedisManagers
from runtrack.registry._redis_output import RedisOutput
from runtrack.registry._redis_retention import RedisRetention, ttl_us
from runtrack.registry._refusals import (
    Candidates,
    candidates_of_changes,
    candidates_of_run,
    candidates_of_writes,
)
from runtrack.registry.base import (
    RunWrite,
    StatusFilter,
    stored_run,
    validate_changes,
    validate_list_args,
)

__all__ = ["RedisRunRegistry"]


class RedisRunRegistry(
    RedisOutput,
    RedisRetention,
    RedisManagers,
    RedisNotifying,
    RedisClaims,
    RedisIdempotency,
    RedisErrors,
):
    """A `RunRegistry` in Redis: every process using the same Redis and prefix sees the same runs.

    Each run is a hash, indexed by sorted sets (creation time, status, name, group, tags,
    age of finished runs); output chunks are a list per run. Every write is one Lua script
    (the whole batch for `write_batch`), so it is atomic on the server: a cut connection
    never leaves half a run, and two processes racing on a transition cannot both win.

    On a Redis Cluster (a ``redis+cluster://`` URL or a ``RedisCluster`` client) every key
    of the registry carries the prefix's hash tag, so all of them live in one slot, on one
    node: every script then runs where all its keys are. Scale out with several registries
    (prefixes), which spread over the nodes.

    Args:
        url_or_client: A ``redis://`` / ``rediss://`` / ``unix://`` URL, a
            ``redis+cluster://host:port`` / ``rediss+cluster://`` URL (any node of a Redis
            Cluster), or a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``
            client. A client you pass stays yours: `aclose` leaves it open.
        prefix: Start of every key, so that several registries can share one database.
            On a cluster, a prefix without a hash tag is wrapped in one (``runtrack:``
            becomes ``{runtrack}:``, see `prefix`); on a standalone Redis it is used as
            given.
        finished_ttl: When set (a `timedelta` or seconds), a finished run and its output
            expire that long after it finished (after ``finished_at``, else ``created_at``).
            Give every registry sharing a prefix the same value.

    Raises:
        TypeError: ``url_or_client`` or ``finished_ttl`` has the wrong type.
        ValueError: ``finished_ttl`` is not positive, the URL is malformed (a database
            that is not a number, say), or on a cluster the prefix has a ``{`` but no
            complete hash tag.

    Example:
        >>> from runtrack.registry.redis import RedisRunRegistry
        >>> RedisRunRegistry("redis://:secret@localhost:6379/0", prefix="myapp:")
        <RedisRunRegistry redis://:***@localhost:6379/0 prefix='myapp:'>
    """

    def __init__(
        self,
        url_or_client: str | redis.asyncio.Redis | RedisCluster,
        *,
        prefix: str = "runtrack:",
        finished_ttl: timedelta | float | None = None,
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        self._ttl_us = ttl_us(finished_ttl)
        if is_cluster(url_or_client):
            # Checked before a client is built, so a refused prefix leaves nothing open.
            prefix = layout.cluster_prefix(prefix)
        if isinstance(url_or_client, str):
            self._client, self._where = client_from_url(url_or_client)
            self._owns_client = True
        elif isinstance(url_or_client, redis.asyncio.Redis | RedisCluster):
            self._where = describe_client(url_or_client)
            self._client = url_or_client
            self._owns_client = False
        else:
            raise TypeError(
                "RedisRunRegistry() takes a redis:// or redis+cluster:// URL, or a "
                "redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster client, "
                f"got {type(url_or_client).__name__}"
            )
        self._prefix = prefix
        self._keys = layout.Keys(prefix)
        self._anchor = [self._keys.schema]
        self._schema_checked = False
        self._first_use = asyncio.Lock()
        self._scripts = {}

    def __repr__(self) -> str:
        return f"<RedisRunRegistry {self._where} prefix={self._prefix!r}>"

    @property
    def batches_in_flight(self) -> int:
        """How many `write_batch` calls a manager may run at once (see `BatchWriting`).

        Two: one is prepared while the server runs the other's script.
        """
        return 2

    @property
    def backend(self) -> str:
        """``"redis"``: the name errors and logs give this registry."""
        return BACKEND

    @property
    def prefix(self) -> str:
        """The start of every key this registry uses.

        On a cluster, the prefix given with its hash tag added when it had none
        (``{runtrack}:`` for the default ``runtrack:``).
        """
        return self._prefix

    @property
    def cluster(self) -> bool:
        """Whether this registry talks to a Redis Cluster."""
        return is_cluster(self._client)

    # -- plumbing ---------------------------------------------------------------------

    async def _ready(self) -> None:
        """Record the schema version on first use; refuse a prefix holding another one."""
        if self._schema_checked:
            return
        # One first call at a time: a burst of them on a cold cluster client would open
        # connections to one node concurrently, which redis-py's cluster client mishandles.
        async with self._first_use:
            if not self._schema_checked:
                await self._check_schema()

    async def _check_schema(self) -> None:
        found = await self._client.set(self._keys.schema, layout.SCHEMA_VERSION, nx=True, get=True)
        version = None if found is None else _text(cast("bytes | str", found))
        if version is not None and version != layout.SCHEMA_VERSION:
            raise RuntimeError(
                f"the keys under prefix {self._prefix!r} use runtrack's Redis schema "
                f"version {version!r}; this runtrack reads version "
                f"{layout.SCHEMA_VERSION!r}: use another prefix or migrate"
            )
        self._schema_checked = True

    async def _run_write(
        self, mode: str, specs: list[dict[str, Any]], values: Callable[[], Candidates]
    ) -> Any:
        async with self._guard(values):
            await self._ready()
            return await self._script(write_scripts.WRITE)(
                keys=self._anchor, args=self._args(self._token(), mode, to_json(specs))
            )

    # -- RunRegistry ----------------------------------------------------------------------

    async def add_run(self, run: Run) -> None:
        """Insert a new run.

        Raises:
            TypeError: ``run`` is not a `Run`.
            DuplicateRunError: a run with this id exists.
            RegistryUnavailableError: Redis could not be reached.
        """
        if not isinstance(run, Run):
            raise TypeError(f"add_run() takes a runtrack.Run, got {type(run).__name__}")
        spec = write_spec(run.run_id, insert=stored_run(run))
        if not await self._run_write(write_scripts.ADD, [spec], lambda: candidates_of_run(run)):
            raise DuplicateRunError(run.run_id)

    async def write_batch(self, writes: Sequence[RunWrite]) -> list[bool]:
        """Apply writes in order in one server-side script (see `BatchWriting`).

        Raises:
            RegistryUnavailableError: Redis could not be reached. The batch is one script,
                so it was applied entirely or not at all; it was applied only if the
                connection broke after the server ran it and every resend failed.
        """
        if not writes:
            return []
        specs = [
            write_spec(
                w.run_id,
                insert=w.record(),
                to=w.to,
                expect=w.expect,
                changes=w.changes,
                owner=w.owner,
            )
            for w in writes
        ]
        flags = await self._run_write(
            write_scripts.BATCH, specs, lambda: candidates_of_writes(writes)
        )
        return [bool(flag) for flag in flags]

    async def get_statuses(self, run_ids: Sequence[str]) -> dict[str, RunStatus]:
        """The status of each existing run in ``run_ids`` (see `StatusReading`).

        One pipelined ``HGET`` per run, in one round trip.
        """
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return {}
        async with self._guard():
            await self._ready()
            async with self._client.pipeline(transaction=False) as pipe:
                for run_id in wanted:
                    _ = pipe.hget(self._keys.run(run_id), "status")  # queued, sent by execute()
                replies = await pipe.execute()
        return {
            run_id: RunStatus(_text(reply))
            for run_id, reply in zip(wanted, replies, strict=True)
            if reply is not None
        }

    async def get_run(self, run_id: str) -> Run | None:
        """Return the run with this id, or None."""
        async with self._guard():
            await self._ready()
            reply = await self._client.hgetall(self._keys.run(run_id))
        return decode_run(reply) if reply else None

    async def transition(
        self,
        run_id: str,
        to: RunStatus | str,
        /,
        *,
        expect: StatusFilter = None,
        **changes: Any,
    ) -> Run | None:
        """Move a run to ``to`` if its status is in ``expect`` (see `RunRegistry`).

        The check and the write are one script, so concurrent callers (in any process)
        cannot both succeed.
        """
        target, expected = check_transition(to, expect)
        valid = validate_changes(changes)
        spec = write_spec(run_id, to=target, expect=expected, changes=valid)
        reply = await self._run_write(
            write_scripts.ONE, [spec], lambda: candidates_of_changes(run_id, valid)
        )
        if not reply:
            return None
        run = decode_run(reply)
        if target is RunStatus.CANCELLED:
            await self._notify_cancelled(run)
        return run

    async def update_run(self, run_id: str, /, **changes: Any) -> Run:
        """Set non-status fields and return the updated run (see `RunRegistry`)."""
        valid = validate_changes(changes)
        spec = write_spec(run_id, changes=valid)
        reply = await self._run_write(
            write_scripts.ONE, [spec], lambda: candidates_of_changes(run_id, valid)
        )
        if not reply:
            raise RunNotFoundError(run_id)
        return decode_run(reply)

    async def list_runs(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        group: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
        task: str | None = None,
        dead: bool | None = None,
    ) -> list[Run]:
        """Runs matching every filter, newest first (see `RunRegistry`)."""
        validate_list_args(limit, offset)
        statuses = normalize_statuses(status)
        if statuses is not None and not statuses:
            return []
        keys: list[str] = []
        if name is not None:
            keys.append(self._keys.name(name))
        if group is not None:
            keys.append(self._keys.group(group))
        keys.extend(self._keys.tag(k, v) for k, v in dict(tags or {}).items())
        if task is not None:
            keys.append(self._keys.task(task))
        if dead:
            keys.append(self._keys.dead)
        excluded = self._keys.dead if dead is False else ""
        # Every status is no filter at all: the script then walks one index instead of five.
        wanted = () if statuses is None or statuses == frozenset(RunStatus) else statuses
        args = self._args(limit, offset, excluded, *sorted(s.value for s in wanted))
        async with self._guard():
            await self._ready()
            reply = await self._swept(read_scripts.LIST, keys, args)
        return [decode_run(h) for h in reply[1:]]

    async def queue_depth(self) -> dict[int, int]:
        """QUEUED runs by priority, from a hash of counts (see `QueueDepthReading`)."""
        async with self._guard():
            await self._ready()
            reply = await self._script(read_scripts.DEPTH)(keys=self._anchor, args=self._args())
        counts = _pairs(reply)
        counts.pop("built", None)
        return dict(sorted((int(p), int(n)) for p, n in counts.items() if int(n) > 0))

    async def count_runs(self, *, name: str | None = None) -> dict[RunStatus, int]:
        """How many runs are in each status (see `RunRegistry`)."""
        keys = [] if name is None else [self._keys.name(name)]
        async with self._guard():
            await self._ready()
            reply = await self._swept(read_scripts.COUNT, keys, self._args())
        return {status: int(n) for status, n in zip(RunStatus, reply[1:], strict=True)}

    async def aclose(self) -> None:
        """Close the connections of a client this registry created. Safe to call twice.

        A client passed to the constructor is left open for its owner to close. Listeners
        still open (see `listen`) are closed first, whoever owns the client.
        """
        await self._close_listeners()
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
