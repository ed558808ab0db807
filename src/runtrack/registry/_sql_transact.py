"""Transactions of `SQLRunRegistry`: each call's work, retried on conflicts, failures explained.

Every call of the registry is one unit of work run by `SQLTransactions._transact` in one
transaction, after the tables exist. A deadlock (or a lost insert race, where the caller
says so) is retried a few times after a short random pause; any other failure becomes the
error that says what it means (see `SQLTransactions._error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from runtrack._exceptions import RegistryConfigError, RegistryUnavailableError
from runtrack.registry._refusals import Candidates, oversized, refused
from runtrack.registry._sql_engine import (
    Failure,
    classify,
    config_problem,
    is_conflict,
    lost_connection,
)
from runtrack.registry._sql_host import SQLHost

__all__ = ["ATTEMPTS", "SQLTransactions"]

#: Attempts of one transaction that lost a deadlock or an insert race.
ATTEMPTS: Final = 5
#: How many arrays or objects MariaDB's JSON check lets nest.
_MYSQL_JSON_DEPTH: Final = 31

_T = TypeVar("_T")


class SQLTransactions(SQLHost):
    """Work in one transaction, and what its failures mean (mixed into `SQLRunRegistry`)."""

    async def _transact(
        self,
        work: Callable[[AsyncConnection], Awaitable[_T]],
        *,
        write: bool,
        retry_integrity: bool = False,
        values: Callable[[], Candidates] | None = None,
    ) -> _T:
        """Run ``work`` in one transaction; retry deadlocks; say what a failure means.

        ``retry_integrity`` retries a unique-key violation too: a batch that lost an insert
        race to another process sees the row the second time and takes its CAS path.
        ``values`` gives the values the write sends, searched only when the database
        refuses one of them.
        """
        await self._ensure_schema()
        engine = self._write_engine if write else self._read_engine
        serialise = self._write_lock is not None and (write or self._serialise_reads)
        attempt = 0
        async with self._explained(values):
            while True:
                attempt += 1
                try:
                    async with contextlib.AsyncExitStack() as stack:
                        if serialise and self._write_lock is not None:
                            await stack.enter_async_context(self._write_lock)
                        conn = await stack.enter_async_context(engine.begin())
                        return await work(conn)
                except Exception as exc:
                    if attempt < ATTEMPTS and is_conflict(exc, integrity=retry_integrity):
                        await asyncio.sleep(random.uniform(0, 0.005 * attempt))
                        continue
                    raise

    @contextlib.asynccontextmanager
    async def _explained(
        self, values: Callable[[], Candidates] | None = None
    ) -> AsyncIterator[None]:
        """Raise, in place of a failure inside, the error it means (see `_error`)."""
        try:
            yield
        except Exception as exc:
            error = await self._error(exc, values)
            if error is exc:
                raise
            raise error from exc

    async def _error(self, exc: Exception, values: Callable[[], Candidates] | None) -> Exception:
        """The error to raise for ``exc``: ``exc`` itself unless it means something known.

        - an outage: `RegistryUnavailableError`;
        - a refused login, a missing database or folder: `RegistryConfigError`;
        - a value the database refuses: `ValueError` naming the run and the field. MySQL
          and MariaDB drop the connection of a statement over ``max_allowed_packet``; a
          lost connection is such a refusal if the write's values exceed it.
        """
        kind = classify(exc, self._engine.url)
        if kind is Failure.OUTAGE:
            if values is not None and self._dialect == "mysql" and lost_connection(exc):
                too_big = await self._oversized(values)
                if too_big is not None:
                    return too_big
            return self._unavailable(exc)
        if kind is Failure.CONFIG:
            problem, fix = config_problem(exc, self._engine.url)
            return RegistryConfigError(self._backend, problem, fix)
        if kind is Failure.CONTENT:
            return refused(
                self._backend,
                None if values is None else values(),
                detail=self._detail(exc),
                nul=self._dialect == "postgresql",
                max_depth=_MYSQL_JSON_DEPTH if self._dialect == "mysql" else None,
            )
        return exc

    async def _oversized(self, values: Callable[[], Candidates]) -> ValueError | None:
        """A `ValueError` if a run's values exceed the server's ``max_allowed_packet``."""
        try:
            async with self._read_engine.connect() as conn:
                limit = await conn.scalar(sa.text("SELECT @@max_allowed_packet"))
        except Exception:  # still unreachable: the outage it looked like
            return None
        if not isinstance(limit, int):
            return None
        return oversized(self._backend, values(), limit, "max_allowed_packet")

    def _detail(self, exc: BaseException) -> str:
        """``exc`` in one short line, for an error message, without the password."""
        orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
        detail = f"{type(orig).__name__}: {orig}".strip().rstrip(":")
        password = self._engine.url.password
        if password:
            detail = detail.replace(str(password), "***")
        if len(detail) > 300:
            detail = detail[:297] + "..."
        return detail

    def _unavailable(self, exc: BaseException) -> RegistryUnavailableError:
        return RegistryUnavailableError(self._backend, self._detail(exc))
