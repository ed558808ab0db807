"""`IdempotentAdding` for `RedisRunRegistry`: one Lua script (`_redis_layout.ONCE`).

Each key is a string ``{prefix}idem:{n}:{key}`` holding the id of the run that holds it;
the script reads it and the run's status, and inserts the new run and points the key at
it only if that run is finished for longer than the key's ttl (or gone). Deleting a run
deletes its key.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from runtrack._exceptions import DuplicateRunError
from runtrack._models import Run
from runtrack.registry import _redis_layout as layout
from runtrack.registry._idempotency import check_once_args
from runtrack.registry._refusals import Candidates, candidates_of_run
from runtrack.registry.base import stored_run

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from runtrack.registry._redis_client import Client

__all__ = ["RedisIdempotency"]


class RedisIdempotency:
    """Idempotent inserts of a Redis registry (mixed into `RedisRunRegistry`)."""

    if TYPE_CHECKING:
        _client: Client
        _keys: layout.Keys
        _anchor: list[str]

        def _guard(
            self, values: Callable[[], Candidates] | None = None
        ) -> AbstractAsyncContextManager[None]: ...

        async def _ready(self) -> None: ...

        def _args(self, *rest: str | int) -> list[str | int]: ...

    _once_script: AsyncScript | None = None

    async def add_run_once(self, run: Run, *, ttl: timedelta) -> tuple[Run, bool]:
        """Insert ``run`` unless its idempotency key is held (see `IdempotentAdding`)."""
        from runtrack.registry.redis import _decode_run, _encode_run, _json  # noqa: PLC0415

        key, window = check_once_args(run, ttl)
        if self._once_script is None:
            self._once_script = self._client.register_script(layout.ONCE)
        fields = _json(_encode_run(stored_run(run)))
        args = self._args(window, key, run.run_id, fields)
        async with self._guard(lambda: candidates_of_run(run)):
            await self._ready()
            reply: Any = await self._once_script(keys=self._anchor, args=args)
        outcome = int(reply[0])
        if outcome == 1:
            return run, True
        if outcome == 2:
            raise DuplicateRunError(run.run_id)
        holder = _decode_run(reply[1])
        # A call redis-py re-sent after its first reply was lost finds its own run.
        return (run, True) if holder.run_id == run.run_id else (holder, False)
