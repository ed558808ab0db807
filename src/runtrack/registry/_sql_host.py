"""`SQLHost`: what the parts of `SQLRunRegistry` share, declared once.

`SQLRunRegistry` is assembled from mixins, one concept each (writes, output, retention,
transactions, schema, managers, claims, idempotency, notifications). Each inherits this
class, which declares the state the registry's constructor sets and the methods one part
calls on another; the registry class, through its mixins, implements them all.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from runtrack._models import Run
    from runtrack.registry._refusals import Candidates
    from runtrack.registry._sql_schema import RowStatement, Tables

__all__ = ["SQLHost"]

_T = TypeVar("_T")


class SQLHost(abc.ABC):
    """The state and shared methods of `SQLRunRegistry`, as its mixins see them."""

    #: The engine given or built; reads and writes go through the two below.
    _engine: AsyncEngine
    #: The same engine, with the options of a read (autocommit where it saves round trips).
    _read_engine: AsyncEngine
    #: The same engine, with the options of a write (``BEGIN IMMEDIATE`` on SQLite).
    _write_engine: AsyncEngine
    #: SQLite only: writers (and a ``:memory:`` database's readers) take turns here.
    _write_lock: asyncio.Lock | None
    _serialise_reads: bool
    _prefix: str
    _tables: Tables
    #: SQLAlchemy's name of the dialect: ``sqlite``, ``postgresql`` or ``mysql``.
    _dialect: str
    #: The name errors and logs give the database.
    _backend: str
    _schema_lock: asyncio.Lock
    _schema_ready: bool
    #: The runs table's columns a batch reads back and writes.
    _batch_columns: list[sa.Column[Any]]
    #: Statements compiled for the driver, by statement and by lock size.
    _row_statements: dict[sa.ClauseElement, RowStatement]
    _lock_statements: dict[int, str]

    @abc.abstractmethod
    async def _transact(
        self,
        work: Callable[[AsyncConnection], Awaitable[_T]],
        *,
        write: bool,
        retry_integrity: bool = False,
        values: Callable[[], Candidates] | None = None,
    ) -> _T:
        """Run ``work`` in one transaction (see `SQLTransactions`)."""

    @abc.abstractmethod
    def _explained(
        self, values: Callable[[], Candidates] | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Raise, in place of a failure inside, the error it means (see `SQLTransactions`)."""

    @abc.abstractmethod
    async def _ensure_schema(self) -> None:
        """Create the tables unless done (see `SQLSchemaSetup`)."""

    @abc.abstractmethod
    async def _insert_rows(self, conn: AsyncConnection, rows: Mapping[str, dict[str, Any]]) -> None:
        """Insert new runs and their tags, keyed by run id (see `SQLWrites`)."""

    @abc.abstractmethod
    async def _insert_tags(
        self, conn: AsyncConnection, tags: Mapping[str, Mapping[str, str]]
    ) -> None:
        """Insert the tag rows of runs (see `SQLWrites`)."""

    @abc.abstractmethod
    async def _select_run(self, conn: AsyncConnection, run_id: str) -> Run | None:
        """The run with this id, read in ``conn``'s transaction, or None."""
