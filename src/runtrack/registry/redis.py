"""`RedisRunRegistry`: runs in Redis, shared by every process that uses the same prefix.

Needs the ``redis`` extra (``pip install 'runtrack[redis]'``). The key layout and the Lua
scripts are described in ``runtrack.registry._redis_layout`` and ``docs/backends/redis.md``;
the client (standalone Redis or Redis Cluster) is built in ``_redis_client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Self, cast

import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from runtrack._clock import dt_to_us, now_us, us_to_dt
from runtrack._exceptions import (
    DuplicateRunError,
    RegistryConfigError,
    RegistryUnavailableError,
    RunNotFoundError,
)
from runtrack._models import OutputChunk, Run, trusted_run
from runtrack._status import TERMINAL, RunStatus, check_transition, normalize_statuses
from runtrack.registry import _redis_layout as layout
from runtrack.registry._notify_redis import RedisNotifying
from runtrack.registry._redis_claims import RedisClaims
from runtrack.registry._redis_client import (
    Client,
    client_from_url,
    client_password,
    describe_client,
    is_cluster,
)
from runtrack.registry._redis_client import pairs as _pairs
from runtrack.registry._redis_client import text as _text
from runtrack.registry._redis_idempotency import RedisIdempotency
from runtrack.registry._redis_managers import RedisManagers
from runtrack.registry._refusals import (
    Candidates,
    candidates_of_changes,
    candidates_of_output,
    candidates_of_run,
    candidates_of_writes,
    refused,
)
from runtrack.registry.base import (
    MUTABLE_FIELDS,
    TIME_FIELDS,
    OutputItem,
    RunWrite,
    StatusFilter,
    check_keep_from_seq,
    is_int,
    stored_run,
    validate_changes,
    validate_cleanup_args,
    validate_list_args,
    validate_output,
)

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

__all__ = ["RedisRunRegistry"]

_BACKEND: Final = "redis"
_INT_FIELDS: Final = frozenset({"priority", "attempt", "max_attempts"})
_FLOAT_FIELDS: Final = frozenset({"timeout", "progress"})
_JSON_FIELDS: Final = frozenset({"parameters", "tags", "result", "args"})
#: Stored as "1" or "0"; absent means false.
_BOOL_FIELDS: Final = frozenset({"dead", "requeue_on_interrupt"})
_EMPTY_IS_ABSENT: Final = frozenset({"parameters", "tags"})
#: Run fields that may be None, other than the JSON ones.
_OPTIONAL_FIELDS: Final = (
    "started_at",
    "finished_at",
    "group",
    "timeout",
    "progress",
    "progress_message",
    "error_type",
    "error_message",
    "owner",
    "heartbeat_at",
    "task",
    "idempotency_key",
    "requeued_from",
    "not_before",
)


# -- encoding: a run's fields as hash strings; None (and {} for parameters/tags) is absent --


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_ENCODERS: Final[dict[str, Callable[[Any], str]]] = {
    **dict.fromkeys(TIME_FIELDS, lambda v: str(v if is_int(v) else dt_to_us(v))),
    **dict.fromkeys(_JSON_FIELDS, _json),
    **dict.fromkeys(_INT_FIELDS, lambda v: str(int(v))),
    **dict.fromkeys(_FLOAT_FIELDS, lambda v: repr(float(v))),
    **dict.fromkeys(_BOOL_FIELDS, lambda v: "1" if v else "0"),
    "status": lambda v: RunStatus(v).value,
}


def _encode(field: str, value: Any) -> str | None:
    """One field as its stored string, or None when the field is absent."""
    if value is None or (not value and field in _EMPTY_IS_ABSENT):
        return None
    encoder = _ENCODERS.get(field)
    return str(value) if encoder is None else encoder(value)


def _encode_run(run: Mapping[str, Any]) -> dict[str, str]:
    """A run in stored form (see `stored_run`) as its hash fields."""
    # Spelled out rather than looped over _encode: it runs for every run inserted.
    fields = {
        "run_id": run["run_id"],
        "name": run["name"],
        "status": RunStatus(run["status"]).value,
        "created_at": str(run["created_at"]),
        "priority": str(run["priority"]),
        "attempt": str(run["attempt"]),
        "max_attempts": str(run["max_attempts"]),
    }
    if run["parameters"]:
        fields["parameters"] = _json(run["parameters"])
    if run["tags"]:
        fields["tags"] = _json(run["tags"])
    if run["result"] is not None:
        fields["result"] = _json(run["result"])
    if run["args"] is not None:
        fields["args"] = _json(run["args"])
    if run["dead"]:
        fields["dead"] = "1"
    if run["requeue_on_interrupt"]:
        fields["requeue_on_interrupt"] = "1"
    for field in _OPTIONAL_FIELDS:
        value = run[field]
        if value is not None:
            fields[field] = _ENCODERS.get(field, str)(value)
    return fields


def _encode_changes(changes: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Changes as (fields to set, fields to clear)."""
    unknown = changes.keys() - MUTABLE_FIELDS
    if unknown:
        raise ValueError(f"cannot change {', '.join(sorted(unknown))}")
    to_set: dict[str, str] = {}
    to_clear: list[str] = []
    for field, value in changes.items():
        text = _encode(field, value)
        if text is None:
            to_clear.append(field)
        else:
            to_set[field] = text
    return to_set, to_clear


def _write_spec(
    run_id: str,
    *,
    insert: Mapping[str, Any] | None = None,
    to: RunStatus | None = None,
    expect: Iterable[RunStatus] = (),
    changes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One write for the WRITE script (absent keys, never null: Lua would see a value)."""
    spec: dict[str, Any] = {"id": run_id}
    if insert is not None:
        spec["ins"] = _encode_run(insert)
    if to is not None:
        spec["to"] = to.value
        spec["exp"] = [s.value for s in expect]
    if changes:
        to_set, to_clear = _encode_changes(changes)
        if to_set:
            spec["set"] = to_set
        if to_clear:
            spec["del"] = to_clear
    return spec


def _decode_run(reply: Any, *, trusted: bool = False) -> Run:
    """The `Run` a hash holds.

    ``trusted``: written by this version's scripts and not validated again (claims decode
    hundreds of runs per call).
    """
    data: dict[str, Any] = {}
    for field, text in _pairs(reply).items():
        if field in TIME_FIELDS:
            data[field] = us_to_dt(int(text))
        elif field in _JSON_FIELDS:
            data[field] = json.loads(text)
        elif field in _INT_FIELDS:
            data[field] = int(text)
        elif field in _FLOAT_FIELDS:
            data[field] = float(text)
        elif field in _BOOL_FIELDS:
            data[field] = text == "1"
        elif field in Run.model_fields:
            data[field] = text
    if trusted:
        data["status"] = RunStatus(data["status"])
        return trusted_run(data)
    return Run.model_validate(data)


# -- errors ---------------------------------------------------------------------------


def _is_pool_exhausted(exc: BaseException) -> bool:
    """Whether ``exc`` means every pooled connection is busy: not an outage."""
    if isinstance(exc, redis.exceptions.MaxConnectionsError):
        return True
    if type(exc) is not redis.exceptions.ConnectionError:
        return False
    # redis-py 5 raises a bare ConnectionError where 6 raises MaxConnectionsError, and
    # BlockingConnectionPool does when its wait for a free connection times out.
    return str(exc) == "Too many connections" or (
        isinstance(exc.__cause__, TimeoutError) and "No connection available" in str(exc)
    )


def _is_transport_reset(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection reset that leaked out of asyncio's transport.

    On CPython 3.12 to 3.14.0, writing to a connection the peer reset while it sat idle
    in the pool raises TypeError or AttributeError from inside asyncio (redis-py issue
    4287) instead of ConnectionError. Only errors raised in asyncio's own modules, on a
    call that came through redis-py's connection code, count: a TypeError of ours does not.
    """
    if not isinstance(exc, TypeError | AttributeError):
        return False
    modules: list[str] = []
    tb = exc.__traceback__
    while tb is not None:
        modules.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    return (
        bool(modules)
        and modules[-1].startswith("asyncio.")
        and any(m.startswith("redis.asyncio.") for m in modules)
    )


_OUTAGE_ERRORS: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    # The server refuses writes for now: a replica during a failover, memory full, a
    # script running too long, a cluster reconfiguring.
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,  # ClusterDownError, MasterDownError, retries exhausted
    redis.exceptions.SlotNotCoveredError,
)
#: How redis-py says that no node of a cluster could be reached (a RedisClusterException).
_CLUSTER_UNREACHABLE: Final = "Redis Cluster cannot be connected"
#: Replies of a server that cannot take commands for now (the ResponseError's text).
_BUSY_REPLIES: Final = ("BUSY ", "MISCONF ")
_AUTH_FIX: Final = "check the user name and password in the URL (redis://user:password@host:6379/0)"
_PERMISSION_FIX: Final = (
    "grant the user the commands the registry uses (EVALSHA, SCRIPT, HGETALL, LRANGE, "
    "SET, ...) on the keys under its prefix"
)


def _config_problem(exc: BaseException) -> tuple[str, str] | None:
    """What is wrong with the configuration ``exc`` reports, and what to do; or None."""
    text = str(exc).strip()
    if isinstance(exc, redis.exceptions.AuthenticationError):
        if "without any password configured" in text or "no password is set" in text:
            return text, "the server has no password: remove it from the URL"
        if text.lower().startswith("authentication required"):
            return "the server needs a password", _AUTH_FIX
        return text, _AUTH_FIX
    if isinstance(exc, redis.exceptions.AuthorizationError | redis.exceptions.NoPermissionError):
        return text, _PERMISSION_FIX
    if isinstance(exc, redis.exceptions.AskError | redis.exceptions.ClusterCrossSlotError):
        return "the server is a node of a Redis Cluster", (
            "use a redis+cluster://host:port URL or a redis.asyncio.cluster.RedisCluster client"
        )
    if isinstance(exc, redis.exceptions.ResponseError) and "DB index is out of range" in text:
        return text, (
            "use a database number below the server's 'databases' setting (16 by default)"
        )
    return None


def _ttl_us(finished_ttl: timedelta | float | None) -> int:
    value: object = finished_ttl  # callers may not be type-checked
    if value is None:
        return 0
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"finished_ttl must be a timedelta, seconds or None, got {finished_ttl!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"finished_ttl must be positive, got {finished_ttl!r}")
    return max(1, round(seconds * 1_000_000))


class RedisRunRegistry(RedisManagers, RedisNotifying, RedisClaims, RedisIdempotency):
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
        self._ttl_us = _ttl_us(finished_ttl)
        if is_cluster(url_or_client):
            # Checked before a client is built, so a refused prefix leaves nothing open.
            prefix = layout.cluster_prefix(prefix)
        if isinstance(url_or_client, str):
            self._client: Client
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
        # Declared by every script call that cannot declare the keys it touches: on a
        # cluster it routes the call to the node of the prefix's slot.
        self._anchor = [self._keys.schema]
        self._schema_checked = False
        self._first_use = asyncio.Lock()
        self._write = self._client.register_script(layout.WRITE)
        self._append = self._client.register_script(layout.APPEND)
        self._output = self._client.register_script(layout.OUTPUT)
        self._trim = self._client.register_script(layout.TRIM)
        self._list = self._client.register_script(layout.LIST)
        self._count = self._client.register_script(layout.COUNT)
        self._depth = self._client.register_script(layout.DEPTH)
        self._cleanup = self._client.register_script(layout.CLEANUP)

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
        return _BACKEND

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

    @property
    def finished_ttl(self) -> timedelta | None:
        """How long finished runs are kept, or None to keep them until cleaned up."""
        return timedelta(microseconds=self._ttl_us) if self._ttl_us else None

    # -- plumbing ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _guard(self, values: Callable[[], Candidates] | None = None) -> AsyncIterator[None]:
        """Say what a failure means: unreachable, misconfigured, or a refused value.

        ``values`` gives the values the call sends, searched only when one is refused.
        """
        try:
            yield
        except Exception as exc:
            if _is_pool_exhausted(exc):
                raise
            problem = _config_problem(exc)
            if problem is not None:
                raise RegistryConfigError(_BACKEND, *problem) from exc
            if isinstance(exc, UnicodeEncodeError):  # a lone surrogate: not valid UTF-8
                candidates = None if values is None else values()
                raise refused(_BACKEND, candidates, detail=str(exc)) from exc
            if (
                isinstance(exc, _OUTAGE_ERRORS)
                or (
                    isinstance(exc, redis.exceptions.ResponseError)
                    and str(exc).startswith(_BUSY_REPLIES)
                )
                or (
                    isinstance(exc, redis.exceptions.RedisClusterException)
                    and str(exc).startswith(_CLUSTER_UNREACHABLE)
                )
            ):
                raise self._unavailable(exc) from exc
            if _is_transport_reset(exc):
                # redis-py still thinks the reset connections are healthy: drop the idle
                # ones so the next call connects afresh.
                if isinstance(self._client, redis.asyncio.Redis):
                    with contextlib.suppress(Exception):
                        await self._client.connection_pool.disconnect(inuse_connections=False)
                raise self._unavailable(exc) from exc
            raise

    def _unavailable(self, exc: BaseException) -> RegistryUnavailableError:
        detail = f"{self._where}: {type(exc).__name__}: {exc}"
        password = client_password(self._client)
        if password:
            detail = detail.replace(password, "***")
        return RegistryUnavailableError(_BACKEND, detail)

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

    def _args(self, *rest: str | int) -> list[str | int]:
        return [self._prefix, self._ttl_us, *rest]

    @staticmethod
    def _token() -> str:
        return os.urandom(12).hex()

    async def _run_write(
        self, mode: str, specs: list[dict[str, Any]], values: Callable[[], Candidates]
    ) -> Any:
        async with self._guard(values):
            await self._ready()
            return await self._write(
                keys=self._anchor, args=self._args(self._token(), mode, _json(specs))
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
        spec = _write_spec(run.run_id, insert=stored_run(run))
        if not await self._run_write(layout.ADD, [spec], lambda: candidates_of_run(run)):
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
            _write_spec(
                w.run_id,
                insert=w.record(),
                to=w.to,
                expect=w.expect,
                changes=w.changes,
            )
            for w in writes
        ]
        flags = await self._run_write(layout.BATCH, specs, lambda: candidates_of_writes(writes))
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
        return _decode_run(reply) if reply else None

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
        spec = _write_spec(run_id, to=target, expect=expected, changes=valid)
        reply = await self._run_write(
            layout.ONE, [spec], lambda: candidates_of_changes(run_id, valid)
        )
        if not reply:
            return None
        run = _decode_run(reply)
        if target is RunStatus.CANCELLED:
            await self._notify_cancelled(run)
        return run

    async def update_run(self, run_id: str, /, **changes: Any) -> Run:
        """Set non-status fields and return the updated run (see `RunRegistry`)."""
        valid = validate_changes(changes)
        spec = _write_spec(run_id, changes=valid)
        reply = await self._run_write(
            layout.ONE, [spec], lambda: candidates_of_changes(run_id, valid)
        )
        if not reply:
            raise RunNotFoundError(run_id)
        return _decode_run(reply)

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
            reply = await self._swept(self._list, keys, args)
        return [_decode_run(h) for h in reply[1:]]

    async def _swept(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        """Call a read script until it has no expired runs left to sweep first."""
        while True:
            reply = await script(keys=[*self._anchor, *keys], args=args)
            if int(reply[0]) == 0:
                return reply

    async def queue_depth(self) -> dict[int, int]:
        """QUEUED runs by priority, from a hash of counts (see `QueueDepthReading`)."""
        async with self._guard():
            await self._ready()
            reply = await self._depth(keys=self._anchor, args=self._args())
        counts = _pairs(reply)
        counts.pop("built", None)
        return dict(sorted((int(p), int(n)) for p, n in counts.items() if int(n) > 0))

    async def count_runs(self, *, name: str | None = None) -> dict[RunStatus, int]:
        """How many runs are in each status (see `RunRegistry`)."""
        keys = [] if name is None else [self._keys.name(name)]
        async with self._guard():
            await self._ready()
            reply = await self._swept(self._count, keys, self._args())
        return {status: int(n) for status, n in zip(RunStatus, reply[1:], strict=True)}

    async def append_output(self, run_id: str, chunks: Iterable[OutputItem]) -> list[OutputChunk]:
        """Append chunks, numbered from 1 per run (see `RunRegistry`).

        Raises:
            RunNotFoundError: no such run.
            ValueError: a stream name is empty or too long, or the text is not valid
                Unicode (a lone surrogate).
        """
        items = validate_output(chunks)
        stamp = now_us()
        encoded = [_json([stamp, stream, text]) for stream, text in items]
        async with self._guard(lambda: candidates_of_output(run_id, items)):
            await self._ready()
            args = self._args(self._token(), run_id, *encoded)
            length = int(await self._append(keys=self._anchor, args=args))
        if length < 0:
            raise RunNotFoundError(run_id)
        at = us_to_dt(stamp)
        first = length - len(items) + 1
        return [
            OutputChunk(seq=first + i, stream=stream, text=text, at=at)
            for i, (stream, text) in enumerate(items)
        ]

    async def get_output(
        self, run_id: str, *, since: int = 0, limit: int | None = None
    ) -> list[OutputChunk]:
        """Chunks with ``seq > since``, oldest first (see `RunRegistry`)."""
        if since < 0:
            raise ValueError(f"since must be >= 0, got {since!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit!r}")
        async with self._guard():
            await self._ready()
            args: list[str | int] = [self._prefix, run_id, since, limit or 0]
            reply = await self._output(keys=self._anchor, args=args)
        first = max(since, int(reply[0])) + 1
        chunks = []
        for seq, item in enumerate(reply[1:], start=first):
            stamp, stream, text = json.loads(item)
            chunks.append(OutputChunk(seq=seq, stream=stream, text=text, at=us_to_dt(stamp)))
        return chunks

    async def trim_output(self, run_id: str, *, keep_from_seq: int) -> int:
        """Delete the chunks with ``seq < keep_from_seq`` but the newest (see `OutputTrimming`).

        One script call: the list is trimmed and the run's hash counts the chunks gone,
        so that seqs continue.
        """
        check_keep_from_seq(keep_from_seq)
        async with self._guard():
            await self._ready()
            args: list[str | int] = [self._prefix, run_id, keep_from_seq]
            return int(await self._trim(keys=self._anchor, args=args))

    async def cleanup_old_runs(
        self,
        *,
        older_than: timedelta,
        statuses: StatusFilter = TERMINAL,
        keep: int = 0,
    ) -> int:
        """Delete finished runs older than ``older_than`` (see `RunRegistry`).

        Walks the index of finished runs oldest first, a few hundred runs per script call;
        never scans the keyspace.
        """
        cutoff, statuses_wanted = validate_cleanup_args(older_than, keep, statuses)
        wanted = sorted(s.value for s in statuses_wanted)
        deleted = skip = 0
        async with self._guard():
            await self._ready()
            if not wanted:
                return 0
            while True:
                args = self._args(cutoff, keep, skip, *wanted)
                reply = await self._swept(self._cleanup, [], args)
                deleted += int(reply[1])
                skip = int(reply[2])
                if int(reply[3]):
                    return deleted

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
