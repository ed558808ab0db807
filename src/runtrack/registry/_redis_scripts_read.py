"""The Lua scripts that read runs of `RedisRunRegistry`: `LIST`, `COUNT` and `DEPTH`.

`LIST` and `COUNT` first unindex expired runs (``sweep``), in bounded steps.
"""

from __future__ import annotations

from typing import Final

from runtrack.registry._redis_prelude import PRELUDE

__all__ = ["COUNT", "DEPTH", "LIST"]

#: KEYS: the schema key, then name/group/tag/task index keys that must all match. ARGV:
#: prefix, ttl, limit, offset, an index key whose runs are left out ('' for none), then the
#: wanted statuses (none: any). Returns {1} if it only swept (call again), else
#: {0, hash, hash, ...} newest first.
LIST: Final = (
    PRELUDE
    + """
if sweep() then return {1} end
local limit, offset = tonumber(ARGV[3]), tonumber(ARGV[4])
local tmp_status, tmp = K_TMP .. 'status', K_TMP .. 'list'
local filters = {unpack(KEYS, 2)}
local sets = {}
for _, k in ipairs(filters) do sets[#sets + 1] = k end
local nstatus = #ARGV - 5
if nstatus == 1 then
  sets[#sets + 1] = K_STATUS .. ARGV[6]
elseif nstatus > 1 then
  local args = {tmp_status, nstatus}
  for i = 6, #ARGV do args[#args + 1] = K_STATUS .. ARGV[i] end
  redis.call('ZUNIONSTORE', unpack(args))
  sets[#sets + 1] = tmp_status
end
local src = K_CREATED
if #sets == 1 then
  src = sets[1]
elseif #sets > 1 then
  local args = {tmp, #sets}
  for _, k in ipairs(sets) do args[#args + 1] = k end
  args[#args + 1] = 'AGGREGATE'
  args[#args + 1] = 'MAX'
  redis.call('ZINTERSTORE', unpack(args))
  src = tmp
end
if ARGV[5] ~= '' then
  redis.call('ZDIFFSTORE', tmp, 2, src, ARGV[5])
  src = tmp
end

-- Entries whose hash is gone (expired under another registry's finished_ttl) are
-- removed as they are met, and the page is refilled from further down.
local out = {0}
local pos = offset
while #out - 1 < limit do
  local ids = redis.call('ZREVRANGE', src, pos, pos + limit - #out)
  if #ids == 0 then break end
  local kept = 0
  for _, id in ipairs(ids) do
    local h = redis.call('HGETALL', K_RUN .. id)
    if #h == 0 then
      purge(id)
      redis.call('ZREM', src, id)
      for _, k in ipairs(filters) do redis.call('ZREM', k, id) end
    else
      kept = kept + 1
      out[#out + 1] = h
    end
  end
  pos = pos + kept
end
redis.call('DEL', tmp, tmp_status)
return out
"""
)

#: KEYS: the schema key, then the name index key, or nothing more. ARGV: prefix, ttl.
#: Returns {1} if it only swept,
#: else {0, count per status in RunStatus order}.
COUNT: Final = (
    PRELUDE
    + """
if sweep() then return {1} end
local out = {0}
for _, s in ipairs(STATUSES) do
  if KEYS[2] then
    out[#out + 1] = redis.call('ZINTERCARD', 2, KEYS[2], K_STATUS .. s)
  else
    out[#out + 1] = redis.call('ZCARD', K_STATUS .. s)
  end
end
return out
"""
)

#: ARGV: prefix, ttl. Returns the flat list priority, count, ... of the QUEUED runs,
#: counting them from the status index once if the counts were never built.
DEPTH: Final = (
    PRELUDE
    + """
if redis.call('HEXISTS', K_DEPTH, 'built') == 0 then
  redis.call('DEL', K_DEPTH)
  for _, id in ipairs(redis.call('ZRANGE', K_STATUS .. 'queued', 0, -1)) do
    local priority = redis.call('HGET', K_RUN .. id, 'priority')
    if priority then redis.call('HINCRBY', K_DEPTH, priority, 1) end
  end
  redis.call('HSET', K_DEPTH, 'built', 1)
end
return redis.call('HGETALL', K_DEPTH)
"""
)
