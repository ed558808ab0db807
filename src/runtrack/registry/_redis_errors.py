"""What a failure of `RedisRunRegistry` means, and the error it becomes.

Every call of the registry runs under `RedisErrors._guard`: a server that cannot be
reached, or cannot take commands for now, is a `RegistryUnavailableError`; a refused
login or command, or a cluster node used as a standalone server, a `RegistryConfigError`;
text Redis cannot store a `ValueError` naming the run and the field. A pool with every
connection busy is none of these: its error goes through as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

import redis.asyncio
import redis.exceptions

from runtrack._exceptions import RegistryConfigError, RegistryUnavailableError
from runtrack.registry._redis_client import client_password
from runtrack.registry._redis_host import RedisHost
from runtrack.registry._refusals import Candidates, refused

__all__ = ["BACKEND", "RedisErrors"]

#: The name errors and logs give the registry.
BACKEND: Final = "redis"


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


def _is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the server cannot be reached or take commands for now."""
    return (
        isinstance(exc, _OUTAGE_ERRORS)
        or (isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(_BUSY_REPLIES))
        or (
            isinstance(exc, redis.exceptions.RedisClusterException)
            and str(exc).startswith(_CLUSTER_UNREACHABLE)
        )
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


class RedisErrors(RedisHost):
    """The errors failures become (mixed into `RedisRunRegistry`)."""

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
                raise RegistryConfigError(BACKEND, *problem) from exc
            if isinstance(exc, UnicodeEncodeError):  # a lone surrogate: not valid UTF-8
                candidates = None if values is None else values()
                raise refused(BACKEND, candidates, detail=str(exc)) from exc
            if _is_outage(exc):
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
        return RegistryUnavailableError(BACKEND, detail)
