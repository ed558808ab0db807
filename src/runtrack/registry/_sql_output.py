"""Run output for `SQLRunRegistry`: the ``{prefix}output`` table.

One row per chunk, keyed by (run_id, seq). An append locks the run's row, so the appenders
of one run take turns and number their chunks from the largest seq stored, plus one.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from runtrack._clock import now_us, us_to_dt
from runtrack._exceptions import RunNotFoundError
from runtrack._models import OutputChunk
from runtrack.registry._refusals import candidates_of_output
from runtrack.registry._sql_host import SQLHost
from runtrack.registry.base import (
    OutputItem,
    check_keep_from_seq,
    validate_output,
    validate_output_args,
)

__all__ = ["SQLOutput"]


class SQLOutput(SQLHost):
    """Appending, reading and trimming run output (mixed into `SQLRunRegistry`)."""

    async def append_output(self, run_id: str, chunks: Iterable[OutputItem]) -> list[OutputChunk]:
        """Append chunks, numbered from 1 per run (see `RunRegistry`).

        Raises:
            TypeError: a chunk is neither a pair of strings nor an `OutputChunk`.
            ValueError: a stream name is empty or too long, or the database refuses the text.
            RunNotFoundError: no such run.
            RegistryUnavailableError: the database could not be reached.
        """
        items = validate_output(chunks)
        runs, output = self._tables.runs, self._tables.output

        async def work(conn: AsyncConnection) -> list[OutputChunk]:
            # Locking the run row serialises appenders of one run, so seqs never collide.
            found = await conn.execute(
                sa.select(runs.c.run_id).where(runs.c.run_id == run_id).with_for_update()
            )
            if found.first() is None:
                raise RunNotFoundError(run_id)
            if not items:
                return []
            last = await conn.scalar(
                sa.select(sa.func.max(output.c.seq)).where(output.c.run_id == run_id)
            )
            start = int(last or 0) + 1
            at = now_us()
            rows = [
                {"run_id": run_id, "seq": seq, "stream": stream, "text": text, "at": at}
                for seq, (stream, text) in enumerate(items, start=start)
            ]
            await conn.execute(output.insert(), rows)
            when = us_to_dt(at)
            return [
                OutputChunk(seq=row["seq"], stream=row["stream"], text=row["text"], at=when)
                for row in rows
            ]

        return await self._transact(
            work, write=True, values=lambda: candidates_of_output(run_id, items)
        )

    async def get_output(
        self, run_id: str, *, since: int = 0, limit: int | None = None
    ) -> list[OutputChunk]:
        """Chunks with ``seq > since``, oldest first (see `RunRegistry`).

        Raises:
            ValueError: ``since`` below 0 or ``limit`` below 1.
            RegistryUnavailableError: the database could not be reached.
        """
        validate_output_args(since, limit)
        output = self._tables.output
        query = (
            sa.select(output.c.seq, output.c.stream, output.c.text, output.c.at)
            .where(output.c.run_id == run_id, output.c.seq > since)
            .order_by(output.c.seq)
        )
        if limit is not None:
            query = query.limit(limit)

        async def work(conn: AsyncConnection) -> list[OutputChunk]:
            return [
                OutputChunk(seq=seq, stream=stream, text=text, at=us_to_dt(at))
                for seq, stream, text, at in await conn.execute(query)
            ]

        return await self._transact(work, write=False)

    async def trim_output(self, run_id: str, *, keep_from_seq: int) -> int:
        """Delete the chunks with ``seq < keep_from_seq`` but the newest (see `OutputTrimming`).

        Raises:
            ValueError: ``keep_from_seq`` is not an int >= 1.
            RegistryUnavailableError: the database could not be reached.
        """
        check_keep_from_seq(keep_from_seq)
        output = self._tables.output

        async def work(conn: AsyncConnection) -> int:
            # Appends take seq max + 1: the newest chunk stays, so a seq is never reused.
            # An append landing meanwhile only adds chunks above the bound.
            last = await conn.scalar(
                sa.select(sa.func.max(output.c.seq)).where(output.c.run_id == run_id)
            )
            if last is None:
                return 0
            bound = min(keep_from_seq, int(last))
            result = await conn.execute(
                output.delete().where(output.c.run_id == run_id, output.c.seq < bound)
            )
            return max(int(result.rowcount), 0)

        return await self._transact(work, write=True)
