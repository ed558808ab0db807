"""Run output for `RedisRunRegistry`: a list per run, one JSON item per chunk.

Each item is ``[at, stream, text]``; a chunk's seq is its place in the list plus the
chunks trimmed before it, which the run's hash counts (see ``_redis_layout``). Each call is
one script.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from runtrack._clock import now_us, us_to_dt
from runtrack._exceptions import RunNotFoundError
from runtrack._models import OutputChunk
from runtrack.registry import _redis_scripts_output as output_scripts
from runtrack.registry._redis_codec import to_json
from runtrack.registry._redis_host import RedisHost
from runtrack.registry._refusals import candidates_of_output
from runtrack.registry.base import (
    OutputItem,
    check_keep_from_seq,
    validate_output,
    validate_output_args,
)

__all__ = ["RedisOutput"]


class RedisOutput(RedisHost):
    """Appending, reading and trimming run output (mixed into `RedisRunRegistry`)."""

    async def append_output(self, run_id: str, chunks: Iterable[OutputItem]) -> list[OutputChunk]:
        """Append chunks, numbered from 1 per run (see `RunRegistry`).

        Raises:
            RunNotFoundError: no such run.
            ValueError: a stream name is empty or too long, or the text is not valid
                Unicode (a lone surrogate).
        """
        items = validate_output(chunks)
        stamp = now_us()
        encoded = [to_json([stamp, stream, text]) for stream, text in items]
        async with self._guard(lambda: candidates_of_output(run_id, items)):
            await self._ready()
            args = self._args(self._token(), run_id, *encoded)
            length = int(await self._script(output_scripts.APPEND)(keys=self._anchor, args=args))
        if length < 0:
            raise RunNotFoundError(run_id)
        at = us_to_dt(stamp)
        first = length - len(items) + 1
        return [
            OutputChunk(seq=first + i, stream=stream, text=text, at=at)
            for i, (stream, text) in enumerate(items)
        ]

    async def get_output(
        self, run_id: str, *, since: int = 0, limit: int | None = None
    ) -> list[OutputChunk]:
        """Chunks with ``seq > since``, oldest first (see `RunRegistry`)."""
        validate_output_args(since, limit)
        async with self._guard():
            await self._ready()
            args: list[str | int] = [self._prefix, run_id, since, limit or 0]
            reply = await self._script(output_scripts.OUTPUT)(keys=self._anchor, args=args)
        first = max(since, int(reply[0])) + 1
        chunks = []
        for seq, item in enumerate(reply[1:], start=first):
            stamp, stream, text = json.loads(item)
            chunks.append(OutputChunk(seq=seq, stream=stream, text=text, at=us_to_dt(stamp)))
        return chunks

    async def trim_output(self, run_id: str, *, keep_from_seq: int) -> int:
        """Delete the chunks with ``seq < keep_from_seq`` but the newest (see `OutputTrimming`).

        One script call: the list is trimmed and the run's hash counts the chunks gone,
        so that seqs continue.
        """
        check_keep_from_seq(keep_from_seq)
        async with self._guard():
            await self._ready()
            args: list[str | int] = [self._prefix, run_id, keep_from_seq]
            return int(await self._script(output_scripts.TRIM)(keys=self._anchor, args=args))
