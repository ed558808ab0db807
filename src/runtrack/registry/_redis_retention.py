"""Retention for `RedisRunRegistry`: ``finished_ttl``, and deleting finished runs past their age.

With ``finished_ttl`` set, the write scripts give a finished run's keys an expiry, and the
read scripts sweep the expired runs out of the indexes before they answer. With or without
it, `cleanup_old_runs` deletes finished runs past an age, walking the index of finished
runs oldest first.
"""

from __future__ import annotations

import math
from datetime import timedelta

from runtrack._status import TERMINAL
from runtrack.registry import _redis_scripts_retention as retention_scripts
from runtrack.registry._redis_host import RedisHost
from runtrack.registry.base import StatusFilter, validate_cleanup_args

__all__ = ["RedisRetention", "ttl_us"]


def ttl_us(finished_ttl: timedelta | float | None) -> int:
    """``finished_ttl`` of `RedisRunRegistry` in microseconds, 0 for None.

    Raises:
        TypeError: it is not a timedelta, a number of seconds or None.
        ValueError: it is not positive.
    """
    value: object = finished_ttl  # callers may not be type-checked
    if value is None:
        return 0
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"finished_ttl must be a timedelta, seconds or None, got {finished_ttl!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"finished_ttl must be positive, got {finished_ttl!r}")
    return max(1, round(seconds * 1_000_000))


class RedisRetention(RedisHost):
    """`finished_ttl` and `cleanup_old_runs` of a Redis registry (mixed into `RedisRunRegistry`)."""

    @property
    def finished_ttl(self) -> timedelta | None:
        """How long finished runs are kept, or None to keep them until cleaned up."""
        return timedelta(microseconds=self._ttl_us) if self._ttl_us else None

    async def cleanup_old_runs(
        self,
        *,
        older_than: timedelta,
        statuses: StatusFilter = TERMINAL,
        keep: int = 0,
    ) -> int:
        """Delete finished runs older than ``older_than`` (see `RunRegistry`).

        Walks the index of finished runs oldest first, a few hundred runs per script call;
        never scans the keyspace.
        """
        cutoff, statuses_wanted = validate_cleanup_args(older_than, keep, statuses)
        wanted = sorted(s.value for s in statuses_wanted)
        deleted = skip = 0
        async with self._guard():
            await self._ready()
            if not wanted:
                return 0
            while True:
                args = self._args(cutoff, keep, skip, *wanted)
                reply = await self._swept(retention_scripts.CLEANUP, [], args)
                deleted += int(reply[1])
                skip = int(reply[2])
                if int(reply[3]):
                    return deleted
