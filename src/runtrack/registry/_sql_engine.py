"""Engines for `SQLRunRegistry`: URL handling, SQLite setup, and which errors mean what."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = [
    "PG_BAD_CHARACTER",
    "SQLITE_BEGIN_OPTION",
    "configure_sqlite",
    "create_engine",
    "is_conflict",
    "is_outage",
    "safe_url",
    "sqlstate",
]

#: PostgreSQL connect timeout (seconds) for engines built from a URL.
_CONNECT_TIMEOUT: Final = 10.0
#: SQLite: how long a writer waits for another process's write lock (milliseconds).
_SQLITE_BUSY_TIMEOUT_MS: Final = 5000
#: Execution option naming the statement that begins a SQLite transaction ("" for none).
SQLITE_BEGIN_OPTION: Final = "runtrack_sqlite_begin"

# PostgreSQL SQLSTATEs of a lost connection or a server that refuses work for now.
_PG_OUTAGE_STATES: Final = frozenset({"57P01", "57P02", "57P03", "53300"})
# PostgreSQL serialization failure and deadlock; MySQL/MariaDB deadlock.
_PG_CONFLICT_STATES: Final = frozenset({"40001", "40P01"})
_MYSQL_DEADLOCK: Final = 1213
#: PostgreSQL's character_not_in_repertoire and untranslatable_character: a NUL character
#: in a text value, sent as text or inside JSON.
PG_BAD_CHARACTER: Final = frozenset({"22021", "22P05"})


def create_engine(url: str | URL) -> AsyncEngine:
    """An engine for ``url``: a PostgreSQL connect timeout, utf8mb4 on MySQL/MariaDB.

    Raises:
        ValueError: ``url`` is not a database URL.
    """
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(
            "SQLRunRegistry() needs a database URL such as sqlite+aiosqlite:///runs.db, "
            "postgresql+asyncpg://user@host/db or mysql+asyncmy://user@host/db"
        ) from exc
    connect_args: dict[str, Any] = {}
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.get_driver_name() == "asyncpg":
        if "timeout" not in parsed.query:
            connect_args["timeout"] = _CONNECT_TIMEOUT
    elif backend == "mysql" and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return create_async_engine(parsed, connect_args=connect_args)


def configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, a busy timeout, foreign keys, and BEGIN emitted by SQLAlchemy, not sqlite3.

    sqlite3's own transaction handling begins late (at the first write) and never for
    SELECT; taking BEGIN over, as SQLAlchemy's SQLite documentation recommends, lets write
    transactions start with BEGIN IMMEDIATE and so take the write lock up front.
    """
    sync_engine = engine.sync_engine
    if sa.event.contains(sync_engine, "connect", _sqlite_on_connect):
        return
    sa.event.listen(sync_engine, "connect", _sqlite_on_connect)
    sa.event.listen(sync_engine, "begin", _sqlite_on_begin)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    begin = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "BEGIN")
    if begin:  # "" for the registry's reads: one SELECT each, autocommit
        conn.exec_driver_sql(begin)


def safe_url(url: URL) -> str:
    """The URL with its password (also one given as a query parameter) masked."""
    secret = {k: "***" for k in url.query if k.lower() in {"password", "passwd", "pwd"}}
    if secret:
        url = url.update_query_dict(secret)
    return url.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE a PostgreSQL error carries, or None."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    state = getattr(orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def _mysql_errno(exc: BaseException) -> int | None:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_conflict(exc: BaseException, *, integrity: bool) -> bool:
    """A deadlock or serialisation failure (or, if asked, a lost insert race): retry."""
    if not isinstance(exc, sa.exc.DBAPIError) or exc.connection_invalidated:
        return False
    if integrity and isinstance(exc, sa.exc.IntegrityError):
        return True
    return sqlstate(exc) in _PG_CONFLICT_STATES or _mysql_errno(exc) == _MYSQL_DEADLOCK


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached (worth retrying later).

    Pool exhaustion (`sqlalchemy.exc.TimeoutError`) is not an outage: the server is fine,
    this process asks too much of its pool.
    """
    if isinstance(exc, sa.exc.TimeoutError):
        return False
    if isinstance(exc, OSError | asyncio.TimeoutError):  # ConnectionRefusedError, resets, ...
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            return True
    state = sqlstate(exc)
    if state is not None:
        return state.startswith("08") or state in _PG_OUTAGE_STATES
    return _is_asyncpg_interface_error(exc)


def _is_asyncpg_interface_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an asyncpg client-side error, raised unwrapped while connecting."""
    try:
        exceptions = importlib.import_module("asyncpg.exceptions")
    except ImportError:
        return False
    interface_error: type[BaseException] = exceptions.InterfaceError
    return isinstance(exc, interface_error)
