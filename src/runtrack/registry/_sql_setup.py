"""Schema setup for `SQLRunRegistry`: the tables created on first use, or dropped.

The first call that needs the tables creates those missing, upgrades an older layout (see
`upgrade`) and records `SCHEMA_VERSION`. Several processes may do it at once: a table
another process created meanwhile makes a ``CREATE`` fail, and the next round's check
sees it.
"""

from __future__ import annotations

import asyncio
import random

import sqlalchemy as sa

from runtrack._clock import now_us
from runtrack._logging import get_logger
from runtrack.registry._sql_engine import Failure, classify
from runtrack.registry._sql_host import SQLHost
from runtrack.registry._sql_schema import SCHEMA_VERSION, upgrade
from runtrack.registry._sql_transact import ATTEMPTS

__all__ = ["SQLSchemaSetup"]

_log = get_logger()


class SQLSchemaSetup(SQLHost):
    """Creating the tables on first use, and `drop_schema` (mixed into `SQLRunRegistry`)."""

    async def drop_schema(self) -> None:
        """Drop the registry's tables and every run in them (for tests and teardown).

        The next call that needs the tables creates them again.

        Raises:
            RegistryUnavailableError: the database could not be reached.
        """
        async with self._schema_lock:
            async with self._explained(), self._write_engine.begin() as conn:
                await conn.run_sync(self._tables.metadata.drop_all, checkfirst=True)
            self._schema_ready = False

    async def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_created():  # another task did it while we waited
                return
            async with self._explained():
                await self._create_schema()
            self._schema_ready = True

    def _schema_created(self) -> bool:
        return self._schema_ready

    async def _create_schema(self) -> None:
        t = self._tables
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._write_engine.begin() as conn:
                    t.use_collation(conn.dialect)
                    await conn.run_sync(t.metadata.create_all, checkfirst=True)
                    # An older schema: its runs table lacks columns and indexes.
                    await conn.run_sync(upgrade, t)
                break
            except sa.exc.DBAPIError as exc:
                # Another process created a table between our check and our CREATE: the
                # next round's check sees it.
                kind = classify(exc, self._engine.url)
                if attempt == ATTEMPTS or kind is Failure.CONFIG or exc.connection_invalidated:
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * attempt))
        try:
            async with self._write_engine.begin() as conn:
                stored = await conn.scalar(sa.select(sa.func.max(t.schema.c.version)))
                if stored is None or stored < SCHEMA_VERSION:
                    await conn.execute(
                        t.schema.insert().values(version=SCHEMA_VERSION, applied_at=now_us())
                    )
        except sa.exc.IntegrityError:
            stored = SCHEMA_VERSION  # another process recorded it first
        if stored is not None and stored > SCHEMA_VERSION:
            _log.warning(
                "sql_schema_newer",
                backend=self._backend,
                prefix=self._prefix,
                schema_version=stored,
                supported=SCHEMA_VERSION,
            )
