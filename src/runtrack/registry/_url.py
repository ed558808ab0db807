"""`registry_from_url`: build a registry from a URL."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from runtrack.registry.memory import InMemoryRunRegistry

if TYPE_CHECKING:
    from runtrack.registry.base import RunRegistry

__all__ = ["CLUSTER_SCHEMES", "SCHEMES", "check_redis_url", "registry_from_url"]

#: URL scheme -> (module, class, extra that provides it).
SCHEMES: Final[dict[str, tuple[str, str, str | None]]] = {
    "memory": ("runtrack.registry.memory", "InMemoryRunRegistry", None),
    "sqlite+aiosqlite": ("runtrack.registry.sql", "SQLRunRegistry", "sql"),
    "postgresql+asyncpg": ("runtrack.registry.sql", "SQLRunRegistry", "sql"),
    "mysql+asyncmy": ("runtrack.registry.sql", "SQLRunRegistry", "sql"),
    "redis": ("runtrack.registry.redis", "RedisRunRegistry", "redis"),
    "rediss": ("runtrack.registry.redis", "RedisRunRegistry", "redis"),
    "redis+cluster": ("runtrack.registry.redis", "RedisRunRegistry", "redis"),
    "rediss+cluster": ("runtrack.registry.redis", "RedisRunRegistry", "redis"),
}
#: Schemes of a Redis Cluster: the host and port of any one node.
CLUSTER_SCHEMES: Final = frozenset({"redis+cluster", "rediss+cluster"})

_FORMS: Final = (
    "memory://, sqlite+aiosqlite:///path.db, postgresql+asyncpg://user@host/db, "
    "mysql+asyncmy://user@host/db, redis://host:6379/0, redis+cluster://host:7000"
)


def registry_from_url(url: str, *, prefix: str | None = None) -> RunRegistry:
    """Build the registry a URL names.

    Args:
        url: ``memory://``, ``sqlite+aiosqlite:///path.db``, ``postgresql+asyncpg://…``,
            ``mysql+asyncmy://…``, ``redis://…`` (``rediss://`` for TLS) or
            ``redis+cluster://host:port`` for a Redis Cluster (any one node;
            ``rediss+cluster://`` for TLS).
        prefix: The SQL registry's ``table_prefix`` or the Redis registry's key ``prefix``;
            None for the backend's default. Registries with different prefixes share
            nothing. ``memory://`` takes none.

    Returns:
        A registry that creates its schema on first use.

    Raises:
        ValueError: the URL is malformed or its scheme unknown, ``memory://`` is followed by
            anything or given a prefix, a Redis database is not a number, or the prefix is
            not one the backend accepts (on a Redis Cluster: a prefix with a ``{`` but no
            complete hash tag).
        ImportError: the backend's extra (``runtrack[sql]``, ``runtrack[redis]``) is missing.

    Example:
        >>> from runtrack import registry_from_url
        >>> registry_from_url("memory://")
        <InMemoryRunRegistry runs=0>
    """
    if not isinstance(url, str):
        raise TypeError(f"registry_from_url() takes a URL string, got {type(url).__name__}")
    try:
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
        if scheme in SCHEMES and scheme != "memory":
            urlsplit(url).port  # noqa: B018 - parses host and port: malformed ones raise here
    except ValueError:
        raise ValueError(f"malformed registry URL: use one of {_FORMS}") from None
    if scheme not in SCHEMES:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ValueError(f"cannot build a registry from a URL with {shown}: use one of {_FORMS}")
    if scheme == "memory":
        if url.lower() != "memory://":
            raise ValueError(f"memory:// takes no host, path or options: use one of {_FORMS}")
        if prefix is not None:
            raise ValueError("memory:// takes no prefix: every in-memory registry is its own")
        return InMemoryRunRegistry()
    if scheme in {"redis", "rediss", *CLUSTER_SCHEMES}:
        check_redis_url(url)
    module_name, class_name, extra = SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"the {scheme} registry needs an extra: pip install 'runtrack[{extra}]' ({exc})"
        ) from exc
    factory = getattr(module, class_name)
    if prefix is None:
        registry: RunRegistry = factory(url)
    elif extra == "sql":
        registry = factory(url, table_prefix=prefix)
    else:
        registry = factory(url, prefix=prefix)
    return registry


def check_redis_url(url: str) -> None:
    """Refuse a Redis URL whose database is not a number (redis-py would use 0 quietly).

    Raises:
        ValueError: the database, in the path or in ``?db=``, is not a number, or is not 0
            on a cluster (``redis+cluster://``: a Redis Cluster has database 0 only).
    """
    parts = urlsplit(url)
    dbs = [value for key, value in parse_qsl(parts.query, keep_blank_values=True) if key == "db"]
    if parts.scheme.lower() != "unix":
        path = unquote(parts.path).strip("/")
        if path:
            dbs.append(path)
    for db in dbs:
        if not (db.isascii() and db.isdigit()):
            raise ValueError(
                f"the database of a Redis URL is a number (redis://host:6379/0), got {db!r}: "
                f"use one of {_FORMS}"
            )
    if parts.scheme.lower() in CLUSTER_SCHEMES and any(int(db) != 0 for db in dbs):
        raise ValueError(
            f"a Redis Cluster has database 0 only, got {', '.join(dbs)}: drop the database "
            "from the URL (redis+cluster://host:7000)"
        )
    if parts.scheme.lower() in CLUSTER_SCHEMES and not parts.hostname:
        raise ValueError(
            "a Redis Cluster URL names one node of the cluster (redis+cluster://host:7000), "
            f"got no host: use one of {_FORMS}"
        )
