"""`ManagerPresence` for `RedisRunRegistry`: two hashes of managers and an index by owner.

``{prefix}managers`` holds each manager's fixed fields (JSON), ``{prefix}manager-beats``
its heartbeat and running count, written by one small script per heartbeat (the scripts
declare both keys, so they run on a Redis Cluster, and MULTI is not needed). The write
scripts keep ``{prefix}idx:owner:...`` (a manager's QUEUED and RUNNING runs) and
``{prefix}idx:ocancel:...`` (its CANCELLED runs by finished_at), so sweeping a dead owner
is one script over its own runs and hearing of cancels one range read.
"""

from __future__ import annotations

import json
from datetime import datetime

from runtrack._clock import dt_to_us, us_to_dt
from runtrack._presence import InterruptedRun, ManagerInfo, interrupted_changes
from runtrack._status import RunStatus
from runtrack.registry import _redis_scripts_managers as manager_scripts
from runtrack.registry._redis_client import pairs as _pairs
from runtrack.registry._redis_client import text as _text
from runtrack.registry._redis_host import RedisHost
from runtrack.registry.base import sweep_dead_managers

__all__ = ["RedisManagers"]

#: CANCELLED entries of an owner older than this (µs) are trimmed when it reads them.
_KEEP_CANCELLED_US = 3600 * 1_000_000


class RedisManagers(RedisHost):
    """The managers of a Redis registry (mixed into `RedisRunRegistry`)."""

    @property
    def _manager_keys(self) -> list[str]:
        return [self._keys.managers, self._keys.manager_beats]

    async def register_manager(self, info: ManagerInfo) -> None:
        """Insert or replace the row of ``info.owner`` (see `ManagerPresence`)."""
        if not isinstance(info, ManagerInfo):
            raise TypeError(f"register_manager() takes a ManagerInfo, got {type(info).__name__}")
        fixed = json.dumps(
            {
                "host": info.host,
                "pid": info.pid,
                "started_at": dt_to_us(info.started_at),
                "lease_us": round(info.lease_seconds * 1_000_000),
                "max_concurrency": info.max_concurrency,
            }
        )
        beat = f"{dt_to_us(info.heartbeat_at)}:{info.running}"
        register = self._script(manager_scripts.REGISTER)
        async with self._guard():
            await self._ready()
            await register(keys=self._manager_keys, args=[info.owner, fixed, beat])

    async def heartbeat_manager(self, owner: str, at: datetime, running: int) -> bool:
        """Refresh the manager's heartbeat; False if its row is gone (see `ManagerPresence`)."""
        beat = self._script(manager_scripts.BEAT)
        async with self._guard():
            await self._ready()
            args = [owner, f"{dt_to_us(at)}:{int(running)}"]
            done = await beat(keys=self._manager_keys, args=args)
        return bool(int(done))

    async def unregister_manager(self, owner: str) -> None:
        """Remove the manager's row (see `ManagerPresence`)."""
        unregister = self._script(manager_scripts.REGISTER)
        async with self._guard():
            await self._ready()
            await unregister(keys=self._manager_keys, args=[owner])

    async def list_managers(self) -> list[ManagerInfo]:
        """Every registered manager, by owner (see `ManagerPresence`)."""
        read = self._script(manager_scripts.MANAGERS_READ)
        async with self._guard():
            await self._ready()
            fixed_reply, beats_reply = await read(keys=self._manager_keys)
        beats = _pairs(beats_reply)
        out: list[ManagerInfo] = []
        for owner, value in _pairs(fixed_reply).items():
            beat = beats.get(owner)
            if beat is None:
                continue
            heartbeat, _, running = beat.partition(":")
            fields = json.loads(value)
            out.append(
                ManagerInfo(
                    owner=owner,
                    host=fields["host"],
                    pid=fields["pid"],
                    started_at=us_to_dt(fields["started_at"]),
                    heartbeat_at=us_to_dt(int(heartbeat)),
                    lease_seconds=fields["lease_us"] / 1_000_000,
                    max_concurrency=fields["max_concurrency"],
                    running=int(running or 0),
                )
            )
        out.sort(key=lambda info: info.owner)
        return out

    async def interrupt_dead_managers(self, now: datetime, by: str) -> list[InterruptedRun]:
        """Sweep managers past their own lease (see `ManagerPresence`)."""
        return await sweep_dead_managers(self, now, by)

    async def _interrupt_owner(
        self, info: ManagerInfo, now: datetime, by: str
    ) -> list[InterruptedRun]:
        interrupt = self._script(manager_scripts.INTERRUPT)
        messages = interrupted_changes(info.owner, info.heartbeat_at, by)
        args = self._args(
            info.owner,
            dt_to_us(info.heartbeat_at),
            dt_to_us(now),
            messages[RunStatus.FAILED.value],
            messages[RunStatus.CANCELLED.value],
        )
        async with self._guard():
            await self._ready()
            reply = await interrupt(keys=self._anchor, args=args)
        swept = []
        for item in reply:
            run = json.loads(item)
            group = run.get("group")
            swept.append(
                InterruptedRun(
                    run["id"],
                    run["name"],
                    info.owner,
                    RunStatus(run["previous"]),
                    RunStatus(run["status"]),
                    int(run["attempt"]),
                    group if isinstance(group, str) else None,
                )
            )
        return swept

    async def cancelled_runs(self, owner: str, since: datetime) -> list[str]:
        """Runs of ``owner`` recorded CANCELLED since ``since`` (see `ManagerPresence`)."""
        key = self._keys.owner_cancelled(owner)
        start = dt_to_us(since)
        async with self._guard():
            await self._ready()
            async with self._client.pipeline(transaction=False) as pipe:
                _ = pipe.zremrangebyscore(key, "-inf", f"({start - _KEEP_CANCELLED_US}")
                _ = pipe.zrangebyscore(key, start, "+inf")
                _, ids = await pipe.execute()
        return [_text(run_id) for run_id in ids]
