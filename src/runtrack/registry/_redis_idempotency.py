"""`IdempotentAdding` for `RedisRunRegistry`: one Lua script (`_redis_scripts_write.ONCE`).

Each key is a string ``{prefix}idem:{n}:{key}`` holding the id of the run that holds it;
the script reads it and the run's status, and inserts the new run and points the key at
it only if that run is finished for longer than the key's ttl (or gone). Deleting a run
deletes its key.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from runtrack._exceptions import DuplicateRunError
from runtrack._models import Run
from runtrack.registry import _redis_scripts_write as write_scripts
from runtrack.registry._idempotency import check_once_args
from runtrack.registry._redis_codec import decode_run, encode_run, to_json
from runtrack.registry._redis_host import RedisHost
from runtrack.registry._refusals import candidates_of_run
from runtrack.registry.base import stored_run

__all__ = ["RedisIdempotency"]


class RedisIdempotency(RedisHost):
    """Idempotent inserts of a Redis registry (mixed into `RedisRunRegistry`)."""

    async def add_run_once(self, run: Run, *, ttl: timedelta) -> tuple[Run, bool]:
        """Insert ``run`` unless its idempotency key is held (see `IdempotentAdding`)."""
        key, window = check_once_args(run, ttl)
        fields = to_json(encode_run(stored_run(run)))
        args = self._args(window, key, run.run_id, fields)
        async with self._guard(lambda: candidates_of_run(run)):
            await self._ready()
            reply: Any = await self._script(write_scripts.ONCE)(keys=self._anchor, args=args)
        outcome = int(reply[0])
        if outcome == 1:
            return run, True
        if outcome == 2:
            raise DuplicateRunError(run.run_id)
        holder = decode_run(reply[1])
        # A call redis-py re-sent after its first reply was lost finds its own run.
        return (run, True) if holder.run_id == run.run_id else (holder, False)
