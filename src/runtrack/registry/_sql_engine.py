"""Engines for `SQLRunRegistry`: URL handling, SQLite setup, and which errors mean what."""

from __future__ import annotations

import asyncio
import enum
import importlib
import os
import pathlib
import ssl
from collections.abc import Iterator
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = [
    "PG_BAD_CHARACTER",
    "SQLITE_BEGIN_OPTION",
    "Failure",
    "classify",
    "config_problem",
    "configure_sqlite",
    "create_engine",
    "is_conflict",
    "is_outage",
    "lost_connection",
    "safe_url",
    "sqlstate",
]

#: PostgreSQL connect timeout (seconds) for engines built from a URL.
_CONNECT_TIMEOUT: Final = 10.0
#: SQLite: how long a writer waits for another process's write lock (milliseconds).
_SQLITE_BUSY_TIMEOUT_MS: Final = 5000
#: Execution option naming the statement that begins a SQLite transaction ("" for none).
SQLITE_BEGIN_OPTION: Final = "runtrack_sqlite_begin"

# PostgreSQL serialization failure and deadlock; MySQL/MariaDB deadlock.
_PG_CONFLICT_STATES: Final = frozenset({"40001", "40P01"})
_MYSQL_DEADLOCK: Final = 1213

# PostgreSQL SQLSTATEs of a server that refuses work for now (class 08, connection
# exceptions, counts too): shutting down, starting, too many connections, out of
# resources, a read-only standby (during a failover).
_PG_OUTAGE_STATES: Final = frozenset(
    {"57P01", "57P02", "57P03", "53000", "53100", "53200", "53300", "25006"}
)
# PostgreSQL SQLSTATEs of a value the server refuses: a NUL or untranslatable character,
# malformed text, a value too long or out of range, a limit or nesting depth exceeded.
_PG_CONTENT_STATES: Final = frozenset(
    {"22021", "22P05", "22P02", "22001", "22003", "54000", "54001"}
)
#: PostgreSQL's character_not_in_repertoire and untranslatable_character: a NUL character
#: in a text value, sent as text or inside JSON.
PG_BAD_CHARACTER: Final = frozenset({"22021", "22P05"})
# PostgreSQL SQLSTATEs of a refused login or a missing database, and what to do.
_PG_CONFIG_STATES: Final[dict[str, str]] = {
    "28000": "check the user name in the URL: create that role, or use one that exists",
    "28P01": "check the user name and password in the URL",
    "3D000": "create the database (CREATE DATABASE ...), or fix its name in the URL",
    "42501": "grant the user the right to create and write the registry's tables",
}

# MySQL/MariaDB server errors of a server that refuses work for now: too many
# connections, shutting down, network errors on its side, lock wait and statement
# timeouts, read-only mode (a failover), a connection killed or idle too long, out of
# memory or disk, a Galera node not ready. Client errors (2000 and up) are all
# connection-level but for the configuration ones below.
_MYSQL_OUTAGE_ERRNOS: Final = frozenset(
    {1021, 1037, 1038, 1040, 1041, 1047, 1053, 1077, 1081, 1152, 1154, 1155, 1156, 1157}
    | {1158, 1159, 1160, 1161, 1184, 1203, 1205, 1226, 1290, 1317, 1836, 1927, 1969}
    | {3024, 4031}
)
# MySQL/MariaDB errors of a value the server refuses: a JSON check failed (MariaDB
# stores JSON as checked text), a packet over max_allowed_packet, an invalid or
# unconvertible string, data too long or out of range, invalid or too deep JSON (MySQL).
_MYSQL_CONTENT_ERRNOS: Final = frozenset(
    {1153, 1264, 1300, 1301, 1366, 1406, 3140, 3141, 3144, 3146, 3157, 4025}
)
_MYSQL_CHECK_FAILED: Final = 4025
# MySQL/MariaDB errors of a refused login or a missing database, and what to do.
_MYSQL_GRANT: Final = "grant the user the rights it needs on the database, or use another user"
_MYSQL_CONFIG_ERRNOS: Final[dict[int, str]] = {
    1044: _MYSQL_GRANT,
    1045: "check the user name and password in the URL",
    1049: "create the database (CREATE DATABASE ...), or fix its name in the URL",
    1130: "allow the user to connect from this host, or connect as another user",
    1142: _MYSQL_GRANT,
    1143: _MYSQL_GRANT,
    1227: _MYSQL_GRANT,
    1251: "use an authentication plugin the asyncmy driver supports",
    1698: "check the user name and password in the URL",
    1820: "set a new password for the user",
    1862: "set a new password for the user",
    2026: "check the TLS options in the URL",
    2059: "use an authentication plugin the asyncmy driver supports",
    3118: "unlock the account, or connect as another user",
    4151: "unlock the account, or connect as another user",
}
# MySQL/MariaDB client errors of a connection lost mid-statement: the server also drops a
# connection that sends a packet over max_allowed_packet.
_MYSQL_LOST: Final = frozenset({2006, 2013, 2055})

# SQLite primary result codes.
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_CANTOPEN = 3, 8, 11, 14
_SQLITE_TOOBIG, _SQLITE_AUTH, _SQLITE_NOTADB = 18, 23, 26
# Busy or locked past the busy timeout, out of memory, I/O error, disk full, lock protocol.
_SQLITE_OUTAGE: Final = frozenset({5, 6, 7, 10, 13, 15})


class Failure(enum.Enum):
    """What a failed database call means."""

    #: The server cannot be reached or refuses work for now: retry later.
    OUTAGE = "outage"
    #: The configuration is wrong (login, database, path): retrying will not help.
    CONFIG = "config"
    #: The server refused a value the write holds: that write's problem.
    CONTENT = "content"
    #: Anything else (a bug, a table dropped underneath): raised as it is.
    OTHER = "other"


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


def _sqlite_code(exc: BaseException) -> int | None:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    code = getattr(orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the driver error it wraps, and their causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, sa.exc.DBAPIError) and current.orig is not None:
            current = current.orig
        else:
            current = current.__cause__


def is_conflict(exc: BaseException, *, integrity: bool) -> bool:
    """A deadlock or serialisation failure (or, if asked, a lost insert race): retry."""
    if not isinstance(exc, sa.exc.DBAPIError) or exc.connection_invalidated:
        return False
    if integrity and isinstance(exc, sa.exc.IntegrityError):
        return True
    return sqlstate(exc) in _PG_CONFLICT_STATES or _mysql_errno(exc) == _MYSQL_DEADLOCK


def classify(exc: BaseException, url: URL) -> Failure:
    """What ``exc``, raised by a call to the database at ``url``, means.

    Only connection-level failures are outages: refused, reset or timed-out connections,
    a server shutting down or out of connections. Pool exhaustion
    (`sqlalchemy.exc.TimeoutError`) is not: the server is fine, this process asks too much
    of its pool.
    """
    if isinstance(exc, sa.exc.TimeoutError):
        return Failure.OTHER
    chain = list(_chain(exc))
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        return Failure.CONFIG
    if any(isinstance(e, UnicodeEncodeError) or _is_asyncpg_error(e, "DataError") for e in chain):
        return Failure.CONTENT  # a lone surrogate the driver cannot encode, a bad argument
    if any(_is_asyncpg_error(e, "ClientConfigurationError") for e in chain):
        return Failure.CONFIG
    backend = url.get_backend_name()
    if backend in {"mysql", "mariadb"}:
        kind = _classify_mysql(exc)
    elif backend == "sqlite":
        kind = _classify_sqlite(exc, url)
    else:
        kind = _classify_postgresql(exc)
    if kind is not None:
        return kind
    if isinstance(exc, OSError | asyncio.TimeoutError):  # ConnectionRefusedError, resets, ...
        return Failure.OUTAGE
    if isinstance(exc, sa.exc.DBAPIError) and (
        exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError)
    ):
        return Failure.OUTAGE
    if _is_asyncpg_error(exc, "InterfaceError"):  # raised unwrapped while connecting
        return Failure.OUTAGE
    return Failure.OTHER


def _classify_postgresql(exc: BaseException) -> Failure | None:
    state = sqlstate(exc)
    if state is None:
        return Failure.OUTAGE if isinstance(exc, sa.exc.OperationalError) else None
    if state in _PG_CONFIG_STATES:
        return Failure.CONFIG
    if state in _PG_CONTENT_STATES:
        return Failure.CONTENT
    if state.startswith("08") or state in _PG_OUTAGE_STATES:
        return Failure.OUTAGE
    return None


def _classify_mysql(exc: BaseException) -> Failure | None:
    errno = _mysql_errno(exc)
    if errno is None:
        return None
    if errno in _MYSQL_CONFIG_ERRNOS:
        return Failure.CONFIG
    if errno in _MYSQL_CONTENT_ERRNOS:
        return Failure.CONTENT
    if errno >= 2000 or errno in _MYSQL_OUTAGE_ERRNOS:
        return Failure.OUTAGE
    return None


def _classify_sqlite(exc: BaseException, url: URL) -> Failure | None:
    code = _sqlite_code(exc)
    if code in {_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_AUTH, _SQLITE_NOTADB}:
        return Failure.CONFIG
    if code == _SQLITE_CANTOPEN:
        return Failure.CONFIG if _sqlite_folder_problem(url) else Failure.OUTAGE
    if code == _SQLITE_TOOBIG:
        return Failure.CONTENT
    if code in _SQLITE_OUTAGE:
        return Failure.OUTAGE
    return None


def is_outage(exc: BaseException, url: URL) -> bool:
    """Whether ``exc`` means the database at ``url`` cannot be reached (retry later)."""
    return classify(exc, url) is Failure.OUTAGE


def lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` is a MySQL/MariaDB connection lost mid-statement."""
    return _mysql_errno(exc) in _MYSQL_LOST or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    )


def config_problem(exc: BaseException, url: URL) -> tuple[str, str]:
    """What is wrong with the configuration ``exc`` reports, and what to do about it."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    message = str(orig.args[1]) if _mysql_errno(exc) is not None else str(orig)
    message = message.strip() or type(orig).__name__
    if url.password:
        message = message.replace(str(url.password), "***")
    backend = url.get_backend_name()
    if backend == "sqlite":
        folder = _sqlite_folder_problem(url)
        if folder is not None:
            return folder
        code = _sqlite_code(exc)
        if code in {_SQLITE_NOTADB, _SQLITE_CORRUPT}:
            return (
                f"{url.database!r} is not a SQLite database, or is damaged ({message})",
                "point the URL at another file, or move this one away",
            )
        return (
            f"{message} ({url.database!r})",
            "give this process read and write access to the file and its folder",
        )
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in _chain(exc)):
        return message, "check the server's certificate and the TLS options in the URL"
    state = sqlstate(exc)
    if backend == "postgresql" and state in _PG_CONFIG_STATES:
        return message, _PG_CONFIG_STATES[state]
    errno = _mysql_errno(exc)
    if errno is not None and errno in _MYSQL_CONFIG_ERRNOS:
        return message, _MYSQL_CONFIG_ERRNOS[errno]
    return message, "check the connection options in the URL"


def _sqlite_folder_problem(url: URL) -> tuple[str, str] | None:
    """The problem with the folder of a SQLite file that cannot be opened, if any."""
    path = _sqlite_path(url)
    if path is None:
        return None
    folder = path.parent
    if not folder.exists():
        return (
            f"the folder {str(folder)!r} of the SQLite database does not exist",
            "create it, or put the database in a folder that exists",
        )
    if not folder.is_dir():
        return (
            f"{str(folder)!r}, the folder of the SQLite database, is not a folder",
            "put the database in a folder",
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        return (
            f"this process may not write in {str(folder)!r}, the SQLite database's folder",
            "give it write access, or put the database elsewhere",
        )
    if path.is_dir():
        return (
            f"the SQLite database path {str(path)!r} is a folder",
            "name a file in the URL, such as sqlite+aiosqlite:///runs.db",
        )
    return None


def _sqlite_path(url: URL) -> pathlib.Path | None:
    """The file of the SQLite database at ``url``, if it is one."""
    database = url.database or ""
    if database.startswith("file:"):  # a URI filename (?uri=true)
        database = database.removeprefix("file:").partition("?")[0]
        if database.startswith("//"):
            database = database[2:]
    if not database or database == ":memory:" or "mode=memory" in (url.database or ""):
        return None
    return pathlib.Path(database).expanduser().absolute()


def _is_asyncpg_error(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is an instance of ``asyncpg.exceptions.<name>``."""
    module = type(exc).__module__
    if not module.startswith("asyncpg"):
        return False
    try:
        exceptions = importlib.import_module("asyncpg.exceptions")
    except ImportError:
        return False
    cls: type[BaseException] = getattr(exceptions, name)
    return isinstance(exc, cls)
