"""Retention for `SQLRunRegistry`: deleting finished runs past their age."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from runtrack._status import TERMINAL
from runtrack.registry._sql_host import SQLHost
from runtrack.registry._sql_schema import chunks, status_values
from runtrack.registry.base import StatusFilter, validate_cleanup_args

__all__ = ["SQLRetention"]


class SQLRetention(SQLHost):
    """`cleanup_old_runs` of a SQL registry (mixed into `SQLRunRegistry`)."""

    async def cleanup_old_runs(
        self,
        *,
        older_than: timedelta,
        statuses: StatusFilter = TERMINAL,
        keep: int = 0,
    ) -> int:
        """Delete finished runs, their tags and output, older than ``older_than``.

        A run's age counts from ``finished_at`` (``created_at`` if it has none). The newest
        ``keep`` runs among ``statuses`` stay whatever their age; runs that are not finished
        are never deleted.

        Returns:
            How many runs were deleted.

        Raises:
            TypeError: ``older_than`` is not a `timedelta`, or ``keep`` not an int.
            ValueError: ``older_than`` or ``keep`` negative, or an unknown status.
            RegistryUnavailableError: the database could not be reached.
        """
        cutoff, wanted = validate_cleanup_args(older_than, keep, statuses)
        if not wanted:
            return 0
        t = self._tables
        runs = t.runs
        age = sa.func.coalesce(runs.c.finished_at, runs.c.created_at)
        finished = runs.c.status.in_(status_values(wanted))

        async def work(conn: AsyncConnection) -> int:
            doomed = sa.and_(finished, age < cutoff)
            if keep:
                # The keep-th newest run: it and everything newer stays.
                edge = (
                    await conn.execute(
                        sa.select(age.label("age"), runs.c.run_id)
                        .where(finished)
                        .order_by(age.desc(), runs.c.run_id.desc())
                        .offset(keep - 1)
                        .limit(1)
                    )
                ).first()
                if edge is None:
                    return 0
                edge_age, edge_id = edge
                doomed = sa.and_(
                    doomed,
                    sa.or_(age < edge_age, sa.and_(age == edge_age, runs.c.run_id < edge_id)),
                )
            ids = list((await conn.execute(sa.select(runs.c.run_id).where(doomed))).scalars())
            deleted = 0
            for chunk in chunks(ids):
                await conn.execute(t.output.delete().where(t.output.c.run_id.in_(chunk)))
                await conn.execute(t.tags.delete().where(t.tags.c.run_id.in_(chunk)))
                result = await conn.execute(runs.delete().where(runs.c.run_id.in_(chunk)))
                deleted += result.rowcount
            return deleted

        return await self._transact(work, write=True)
