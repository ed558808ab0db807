"""The Lua script that deletes old finished runs of `RedisRunRegistry`: `CLEANUP`."""

from __future__ import annotations

from typing import Final

from runtrack.registry._redis_prelude import PRELUDE

__all__ = ["CLEANUP", "CLEANUP_CHUNK"]

#: Most runs one script call deletes: long cleanups go in several calls, so Redis
#: keeps serving other clients between them.
CLEANUP_CHUNK: Final = 500

#: KEYS: the schema key.
#: ARGV: prefix, ttl, cutoff (µs), keep, skip, then the terminal statuses to clean.
#: Walks K_FINISHED oldest first from rank ``skip`` (runs of other statuses are skipped
#: and counted in it) and deletes runs older than cutoff, sparing the newest ``keep``.
#: Returns {1} if it only swept, else {0, deleted, skip, done}.
CLEANUP: Final = (
    PRELUDE
    + f"""
if sweep() then return {{1}} end
local cutoff, keep, skip = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local wanted, total = {{}}, 0
for i = 6, #ARGV do
  wanted[ARGV[i]] = true
  total = total + redis.call('ZCARD', K_STATUS .. ARGV[i])
end
local quota = total - keep
if quota <= 0 then return {{0, 0, skip, 1}} end
local ids = redis.call('ZRANGEBYSCORE', K_FINISHED, '-inf', '(' .. cutoff,
  'LIMIT', skip, {CLEANUP_CHUNK})
local deleted = 0
for _, id in ipairs(ids) do
  if deleted >= quota then return {{0, deleted, skip, 1}} end
  local status = redis.call('HGET', K_RUN .. id, 'status')
  if not status then
    purge(id)
  elseif wanted[status] then
    purge(id)
    deleted = deleted + 1
  else
    skip = skip + 1
  end
end
return {{0, deleted, skip, #ids < {CLEANUP_CHUNK} and 1 or 0}}
"""
)
