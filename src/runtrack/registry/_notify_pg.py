"""`Notifying` for `SQLRunRegistry`: PostgreSQL ``LISTEN/NOTIFY``; nothing elsewhere.

Channels, from the table prefix (so registries with other prefixes hear nothing)::

    {prefix}cancel:{owner}    payload: the run_id of a run of ``owner`` recorded CANCELLED
    {prefix}work              payload: a task name with new work queued

A name longer than a PostgreSQL identifier (63 bytes) is cut and ends with a digest of the
whole (see `short_channel`). The cancel is sent by ``pg_notify`` in the transaction of the
compare-and-set that recorded it, so it is delivered only if that commits. The listener
holds one asyncpg connection of its own, opened with the engine's URL (not taken from its
pool, so a listener never starves or disturbs the registry's queries), and ``LISTEN``s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from runtrack._status import RunStatus
from runtrack.registry._notifying import (
    InertListener,
    ListenerKeeper,
    NotificationListener,
    check_task_names,
    short_channel,
)
from runtrack.registry._sql_host import SQLHost

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from runtrack._models import Run

__all__ = ["SQLNotifying"]

#: How often a listening connection is checked, in seconds: locally (closed?), and with a
#: query every `_PING_EVERY` checks (a connection the network dropped silently).
_CHECK_EVERY: Final = 0.5
_PING_EVERY: Final = 20
#: Seconds to open (or close) the listening connection.
_CONNECT_TIMEOUT: Final = 10.0
#: `create_connect_args` keys that SQLAlchemy's asyncpg adapter takes, not asyncpg.
_ADAPTER_ONLY: Final = (
    "async_fallback",
    "async_creator_fn",
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
)


class _PgSession:
    """One connection of its own (outside the engine's pool) that LISTENs."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self._gone = asyncio.Event()

    @classmethod
    async def open(
        cls, engine: AsyncEngine, handlers: dict[str, Callable[[str], None]]
    ) -> _PgSession:
        import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415 - only PostgreSQL needs it

        # The engine's own arguments for asyncpg, less those SQLAlchemy's adapter keeps.
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        for key in _ADAPTER_ONLY:
            cparams.pop(key, None)
        cparams.setdefault("timeout", _CONNECT_TIMEOUT)
        driver = await asyncpg.connect(*cargs, **cparams)
        session = cls(driver)
        try:
            driver.add_termination_listener(session._terminated)
            for channel, handler in handlers.items():
                await driver.add_listener(channel, _callback(handler))
        except BaseException:
            driver.terminate()
            raise
        return session

    def _terminated(self, _conn: object) -> None:
        self._gone.set()

    async def lost(self) -> None:
        checks = 0
        while not self._driver.is_closed():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CHECK_EVERY):
                    await self._gone.wait()
                    return
            checks += 1
            if checks % _PING_EVERY == 0:
                await self._driver.fetchval("SELECT 1", timeout=10)

    async def aclose(self) -> None:
        driver = self._driver
        if driver.is_closed():
            return
        try:
            await driver.close(timeout=_CONNECT_TIMEOUT)
        except Exception:  # cut meanwhile, or the server is slow to answer
            driver.terminate()


def _callback(handler: Callable[[str], None]) -> Callable[[Any, int, str, str], None]:
    def called(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        handler(payload)

    return called


class SQLNotifying(ListenerKeeper, SQLHost):
    """`Notifying` for the SQL registry (PostgreSQL pushes; SQLite and MariaDB do not)."""

    #: Where listeners connect; None: the registry's own engine (tests route it elsewhere).
    _listen_engine: AsyncEngine | None = None

    def _cancel_channel(self, owner: str) -> str:
        return short_channel(f"{self._prefix}cancel:{owner}")

    def _work_channel(self) -> str:
        return short_channel(f"{self._prefix}work")

    async def listen(
        self,
        owner: str,
        *,
        on_cancel: Callable[[str], None],
        on_new_work: Callable[[str], None],
    ) -> NotificationListener:
        """Listen for ``owner``'s cancels and for new work (see `Notifying`).

        On SQLite and MariaDB the listener never calls back: managers poll there.
        """
        if self._dialect != "postgresql":
            return InertListener()
        engine = self._listen_engine or self._engine
        handlers = {self._cancel_channel(owner): on_cancel, self._work_channel(): on_new_work}

        async def open_session() -> _PgSession:
            return await _PgSession.open(engine, handlers)

        where = f"postgresql LISTEN {', '.join(handlers)}"
        return await self._open_listener(open_session, where)

    async def announce_new_work(self, tasks: Collection[str]) -> None:
        """One ``NOTIFY`` per distinct task name, in one transaction (see `Notifying`).

        Nothing is sent on SQLite and MariaDB.
        """
        names = check_task_names(tasks)
        if self._dialect != "postgresql" or not names:
            return
        channel = self._work_channel()
        statement = sa.select(*(sa.func.pg_notify(channel, sa.literal(name)) for name in names))

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement)

        await self._transact(work, write=True)

    async def _notify_cancelled(self, conn: AsyncConnection, run: Run) -> None:
        """In the compare-and-set's transaction: tell ``run``'s owner it was cancelled."""
        if run.status is RunStatus.CANCELLED and run.owner and self._dialect == "postgresql":
            await conn.execute(
                sa.select(sa.func.pg_notify(self._cancel_channel(run.owner), run.run_id))
            )
