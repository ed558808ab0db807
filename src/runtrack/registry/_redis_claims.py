"""`TaskClaiming` for `RedisRunRegistry`: one Lua script per call.

The write scripts keep ``{prefix}idx:claim:{n}:{task}``, a zset per durable task of its
unclaimed QUEUED runs (score ``-priority``, members ``"{created_at:020}:{run_id}"``, so
the first members are the next to run). A claim pops the first ``limit`` members of each
task wanted, keeps the best ``limit`` and records them RUNNING under their new owner, in
one script: exactly one claimer gets each run.

A run whose ``not_before`` has not come waits in ``{prefix}idx:delayed:{n}:{task}`` instead,
scored by ``not_before``; the claim script first moves up to ``limit`` due ones of each
task into the claim zset, due by Redis's own clock (``TIME``), so replicas whose clocks
differ agree. While no run is delayed, that costs one lookup of an empty key per task.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from runtrack._clock import now_us
from runtrack._exceptions import DuplicateRunError
from runtrack._models import Run
from runtrack.registry import _redis_prelude as prelude
from runtrack.registry._redis_client import text as _text
from runtrack.registry._redis_codec import decode_fields, encode_run, to_json
from runtrack.registry._redis_host import RedisHost
from runtrack.registry._refusals import candidates_of_run

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

__all__ = ["RedisClaims"]

#: ARGV: prefix, ttl, then one JSON object of hash fields per run. Inserts them all, or,
#: if one id exists, none: returns that id ('' when all were inserted).
ADD_RUNS: Final = (
    prelude.PRELUDE
    + """
local runs = {}
for i = 3, #ARGV do
  local fields = cjson.decode(ARGV[i])
  if redis.call('EXISTS', K_RUN .. fields.run_id) == 1 then return fields.run_id end
  runs[#runs + 1] = fields
end
for _, fields in ipairs(runs) do insert(fields.run_id, fields) end
return ''
"""
)

#: ARGV: prefix, ttl, owner, limit, started_at, then the task names. Records the runs
#: claimed RUNNING and returns them, best
#: first, as one JSON array of their hashes (field -> string): one string to parse, where
#: nested replies would cost the client a parse per field.
CLAIM: Final = (
    prelude.PRELUDE
    + """
local owner, limit, started = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local now = num(now_us())
local claimed = {owner = owner}
local found = {}
for i = 6, #ARGV do
  local k = K_CLAIM .. lp(ARGV[i])
  local d = K_DELAYED .. lp(ARGV[i])
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', d, '-inf', now, 'LIMIT', 0, limit)) do
    redis.call('ZREM', d, m)
    local f = redis.call('HMGET', K_RUN .. string.sub(m, 22), 'status', 'owner', 'priority')
    if f[1] == 'queued' and not f[2] then redis.call('ZADD', k, -tonumber(f[3]), m) end
  end
  local items = redis.call('ZRANGE', k, 0, limit - 1, 'WITHSCORES')
  for j = 1, #items, 2 do found[#found + 1] = {tonumber(items[j + 1]), items[j], k} end
end
if #ARGV > 6 then
  table.sort(found, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
end
local out = {}
for _, item in ipairs(found) do
  if #out >= limit then break end
  redis.call('ZREM', item[3], item[2])
  local id = string.sub(item[2], 22)
  local cur = current(id)
  if cur[1] == 'queued' and not cur[6] then
    local at = started
    if cur[10] and tonumber(cur[10]) > tonumber(started) then at = cur[10] end
    claimed.started_at, claimed.heartbeat_at = at, at
    apply(id, 'running', {'queued'}, claimed, {}, cur)
    local h, run = redis.call('HGETALL', K_RUN .. id), {}
    for j = 1, #h, 2 do run[h[j]] = h[j + 1] end
    out[#out + 1] = run
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""
)

#: ARGV: prefix, ttl, owner, then run ids. Unclaims those still claimed by owner (QUEUED,
#: or RUNNING since the claim and never started); returns how many.
RELEASE: Final = (
    prelude.PRELUDE
    + """
local owner, n = ARGV[3], 0
for i = 4, #ARGV do
  local f = redis.call('HMGET', K_RUN .. ARGV[i], 'status', 'owner')
  if f[2] == owner and f[1] == 'queued' then
    apply(ARGV[i], false, nil, {}, {'owner'})
    n = n + 1
  elseif f[2] == owner and f[1] == 'running' then
    apply(ARGV[i], 'queued', {'running'}, {}, {'owner', 'started_at', 'heartbeat_at'})
    n = n + 1
  end
end
return n
"""
)


class RedisClaims(RedisHost):
    """Claiming durable runs in a Redis registry (mixed into `RedisRunRegistry`)."""

    _claim_scripts: tuple[AsyncScript, AsyncScript, AsyncScript] | None = None

    def _claiming(self) -> tuple[AsyncScript, AsyncScript, AsyncScript]:
        if self._claim_scripts is None:
            register = self._client.register_script
            self._claim_scripts = (register(ADD_RUNS), register(CLAIM), register(RELEASE))
        return self._claim_scripts

    async def add_runs(self, runs: Sequence[Run]) -> None:
        """Record new runs with one script, all or none (see `TaskClaiming`).

        Raises:
            TypeError: an item is not a `Run`.
            DuplicateRunError: one of the ids exists (or is given twice).
            RegistryUnavailableError: Redis could not be reached.
        """
        seen: set[str] = set()
        encoded: list[str | int] = []
        for run in runs:
            if not isinstance(run, Run):
                raise TypeError(f"add_runs() takes Runs, got {type(run).__name__}")
            if run.run_id in seen:
                raise DuplicateRunError(run.run_id)
            seen.add(run.run_id)
            encoded.append(to_json(encode_run(run.__dict__)))
        if not encoded:
            return
        add, _, _ = self._claiming()

        def values() -> Iterator[tuple[str, str, object]]:
            for run in runs:
                yield from candidates_of_run(run)

        async with self._guard(values):
            await self._ready()
            existing = await add(keys=self._anchor, args=self._args(*encoded))
        if existing:
            raise DuplicateRunError(_text(existing))

    async def claim_runs(self, owner: str, tasks: Collection[str], limit: int) -> list[Run]:
        """Take up to ``limit`` unclaimed QUEUED runs of ``tasks`` (see `TaskClaiming`).

        Raises:
            RegistryUnavailableError: Redis could not be reached.
        """
        names = sorted(set(tasks))
        if limit < 1 or not names:
            return []
        _, claim, _ = self._claiming()
        async with self._guard():
            await self._ready()
            started = now_us()
            reply = await claim(
                keys=self._anchor, args=self._args(owner, int(limit), started, *names)
            )
        return [decode_fields(fields, trusted=True) for fields in json.loads(reply)]

    async def release_runs(self, owner: str, run_ids: Sequence[str]) -> int:
        """Unclaim those of ``run_ids`` still claimed by ``owner`` (see `TaskClaiming`).

        Raises:
            RegistryUnavailableError: Redis could not be reached.
        """
        ids = sorted(set(run_ids))
        if not ids:
            return 0
        _, _, release = self._claiming()
        async with self._guard():
            await self._ready()
            return int(await release(keys=self._anchor, args=self._args(owner, *ids)))
