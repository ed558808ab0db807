"""The redis-py client of `RedisRunRegistry`: built from a URL, or the caller's own.

A ``redis://`` / ``rediss://`` / ``unix://`` URL gives a ``redis.asyncio.Redis``; a
``redis+cluster://`` / ``rediss+cluster://`` URL gives a ``redis.asyncio.cluster.RedisCluster``
(the host and port of any one node: redis-py discovers the others). Also here: how a
client is described in errors and reprs, without its password.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from runtrack.registry._url import CLUSTER_SCHEMES, check_redis_url

__all__ = [
    "Client",
    "client_from_url",
    "client_password",
    "describe_client",
    "is_cluster",
    "pairs",
    "text",
]

#: Either kind of client the registry talks through.
Client = redis.asyncio.Redis | RedisCluster

#: Retries of a command whose connection failed (a client built from a URL): a pooled
#: connection the server closed while idle is replaced without the caller noticing. Safe
#: for writes, since a script call re-sent after its reply was lost is not applied twice.
_RETRIES: Final = 3
_BACKOFF_BASE: Final = 0.01
_BACKOFF_CAP: Final = 0.5


def text(value: bytes | str) -> str:
    """A reply item as text."""
    return value.decode() if isinstance(value, bytes) else value


def pairs(reply: Any) -> dict[str, str]:
    """A hash reply (a flat list from RESP2 and scripts, a dict from RESP3) as str -> str."""
    if isinstance(reply, dict):
        return {text(k): text(v) for k, v in reply.items()}
    items = [text(v) for v in reply]
    return dict(zip(items[::2], items[1::2], strict=True))


def is_cluster(url_or_client: object) -> bool:
    """Whether a client, or a URL, names a Redis Cluster."""
    if isinstance(url_or_client, str):
        return url_or_client.partition("://")[0].lower() in CLUSTER_SCHEMES
    return isinstance(url_or_client, RedisCluster)


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = netloc.rpartition("@")[2]
        netloc = f"{user}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def client_from_url(url: str) -> tuple[Client, str]:
    """A new client for ``url``, and the URL without its password (for messages).

    Raises:
        ValueError: the URL is malformed (see `check_redis_url`).
    """
    check_redis_url(url)
    retry = Retry(ExponentialWithJitterBackoff(_BACKOFF_CAP, _BACKOFF_BASE), _RETRIES)
    # Named explicitly: redis-py 6 retries these by default, 5.x only when told.
    retry_on = [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    scheme, _, rest = url.partition("://")
    if scheme.lower() in CLUSTER_SCHEMES:
        plain = scheme.lower().removesuffix("+cluster") + "://" + rest
        # The cluster client retries a failed command itself, reconnecting to the node
        # that now holds the slot: its own retry settings are kept.
        cluster: Client = RedisCluster.from_url(plain)
        return cluster, safe_url(url)
    client: Client = redis.asyncio.Redis.from_url(url, retry=retry, retry_on_error=retry_on)
    return client, safe_url(url)


def _kwargs(client: Client) -> dict[str, Any]:
    if isinstance(client, RedisCluster):
        return dict(getattr(client, "connection_kwargs", {}))
    return dict(client.connection_pool.connection_kwargs)


def client_password(client: Client) -> str | None:
    """The password ``client`` logs in with, to keep it out of messages."""
    password = _kwargs(client).get("password")
    return None if password is None else str(password)


def describe_client(client: Client) -> str:
    """Where a client connects, as a URL without its password."""
    kwargs = _kwargs(client)
    auth = ""
    if kwargs.get("password") is not None:
        auth = f"{kwargs.get('username') or ''}:***@"
    elif kwargs.get("username"):
        auth = f"{kwargs['username']}@"
    if isinstance(client, RedisCluster):
        nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", {})
        where = next(iter(nodes), "?")
        return f"redis+cluster://{auth}{where}"
    db = kwargs.get("db", 0)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={db}"
    host = kwargs.get("host", "localhost")
    port = kwargs.get("port", 6379)
    return f"redis://{auth}{host}:{port}/{db}"
