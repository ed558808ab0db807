"""The Lua helpers every write, read and sweep script of `RedisRunRegistry` starts with.

They build key names from the prefix in ``ARGV[1]`` as `_redis_layout.Keys` does, and keep a
run's indexes, owner sets, claim queues and queued-depth counts in step with its hash: the
scripts call ``insert``, ``apply``, ``purge``, ``settle`` and ``sweep``.
"""

from __future__ import annotations

from typing import Final

from runtrack._status import TERMINAL, RunStatus
from runtrack.registry._redis_layout import (
    EXPIRING,
    IDEMPOTENCY,
    IDX_CLAIM,
    IDX_CREATED,
    IDX_DEAD,
    IDX_DELAYED,
    IDX_FINISHED,
    IDX_GROUP,
    IDX_NAME,
    IDX_OCANCEL,
    IDX_OWNER,
    IDX_STATUS,
    IDX_TAG,
    IDX_TASK,
    OP,
    OUT,
    QUEUED_DEPTH,
    RUN,
    TMP,
)

__all__ = ["PRELUDE", "SWEEP_CHUNK"]

#: Most expired runs one read call unindexes before it reads (it calls again for more).
SWEEP_CHUNK: Final = 500

_STATUSES = ", ".join(f"'{s.value}'" for s in RunStatus)
_TERMINAL = ", ".join(f"{s.value} = true" for s in sorted(TERMINAL))

# Shared by every script. ARGV[1] is the prefix, ARGV[2] finished_ttl in µs (0: none).
# Numbers go back to Redis through num(): Lua would print a µs timestamp as 1.7e+15.
# Each helper reads (and decodes) everything it needs before its first write, so a
# script that fails fails before it changes anything.
_PRELUDE: Final = f"""
local P = ARGV[1]
local TTL = tonumber(ARGV[2])
local K_RUN = P .. '{RUN}'
local K_OUT = P .. '{OUT}'
local K_CREATED = P .. '{IDX_CREATED}'
local K_FINISHED = P .. '{IDX_FINISHED}'
local K_STATUS = P .. '{IDX_STATUS}'
local K_NAME = P .. '{IDX_NAME}'
local K_GROUP = P .. '{IDX_GROUP}'
local K_TAG = P .. '{IDX_TAG}'
local K_TASK = P .. '{IDX_TASK}'
local K_DEAD = P .. '{IDX_DEAD}'
local K_CLAIM = P .. '{IDX_CLAIM}'
local K_DELAYED = P .. '{IDX_DELAYED}'
local K_EXPIRING = P .. '{EXPIRING}'
local K_OP = P .. '{OP}'
local K_TMP = P .. '{TMP}'
local K_OWNER = P .. '{IDX_OWNER}'
local K_OCANCEL = P .. '{IDX_OCANCEL}'
local K_IDEM = P .. '{IDEMPOTENCY}'
local K_DEPTH = P .. '{QUEUED_DEPTH}'
local STATUSES = {{{_STATUSES}}}
local TERMINAL = {{{_TERMINAL}}}

local function num(n) return string.format('%.0f', n) end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function lp(s) return #s .. ':' .. s end

-- One more (n = 1) or one fewer (n = -1) QUEUED run of a priority.
local function depth(priority, n)
  if redis.call('HINCRBY', K_DEPTH, priority, n) <= 0 then redis.call('HDEL', K_DEPTH, priority) end
end

-- The owner indexes of a run whose owner or status changed: the owner's set of active
-- runs, and its CANCELLED runs by finished_at (how an owner hears of cancels).
local function owner_index(id, old_owner, old_status, owner, status, finished)
  if old_owner and (old_owner ~= owner or TERMINAL[status]) then
    redis.call('SREM', K_OWNER .. lp(old_owner), id)
  end
  if not owner then return end
  if not TERMINAL[status] then
    redis.call('SADD', K_OWNER .. lp(owner), id)
  elseif status == 'cancelled' and old_status ~= 'cancelled' and finished then
    redis.call('ZADD', K_OCANCEL .. lp(owner), finished, id)
  end
end

-- A durable run's entry in its task's claim queue: there while QUEUED and unclaimed, and
-- due; until its not_before (a run without one has never been delayed), in its task's
-- delayed set instead, from which a claim moves it when due.
local function claim_member(created, id)
  return string.format('%020.0f', tonumber(created)) .. ':' .. id
end

local function claimable(id, task, status, owner, created, priority, not_before, was)
  if not task then return end
  -- was: whether it may be in the claim sets now (nil: unknown). One that was not, and is
  -- not claimable, has nothing to move (a claim drops any stale member it meets).
  if was == false and not (status == 'queued' and not owner) then return end
  local k, m = K_CLAIM .. lp(task), claim_member(created, id)
  if status == 'queued' and not owner then
    if not_before then
      local d = K_DELAYED .. lp(task)
      if tonumber(not_before) > now_us() then
        redis.call('ZREM', k, m)
        redis.call('ZADD', d, not_before, m)
        return
      end
      redis.call('ZREM', d, m)
    end
    redis.call('ZADD', k, -tonumber(priority), m)
  else
    redis.call('ZREM', k, m)
    if not_before then redis.call('ZREM', K_DELAYED .. lp(task), m) end
  end
end

-- The name, group, tag and task index keys of a run (tags: the stored JSON, or false).
local function attr_keys(name, group, tags, task)
  local keys = {{K_NAME .. lp(name)}}
  if group then keys[#keys + 1] = K_GROUP .. lp(group) end
  if task then keys[#keys + 1] = K_TASK .. lp(task) end
  if tags then
    for k, v in pairs(cjson.decode(tags)) do keys[#keys + 1] = K_TAG .. lp(k) .. '=' .. v end
  end
  return keys
end

-- Delete a run, its output and every index entry; works on a run whose hash expired
-- if its index keys were recorded in K_EXPIRING.
local function purge(id)
  local rk = K_RUN .. id
  local f = redis.call('HMGET', rk, 'status', 'name', 'group', 'tags', 'owner', 'task',
    'created_at', 'idempotency_key', 'priority', 'not_before')
  local keys
  if f[1] == 'queued' then depth(f[9], -1) end
  if f[8] and redis.call('GET', K_IDEM .. lp(f[8])) == id then
    redis.call('DEL', K_IDEM .. lp(f[8]))
  end
  if f[5] then
    redis.call('SREM', K_OWNER .. lp(f[5]), id)
    redis.call('ZREM', K_OCANCEL .. lp(f[5]), id)
  end
  if f[1] then
    keys = attr_keys(f[2], f[3], f[4], f[6])
    if f[6] then redis.call('ZREM', K_CLAIM .. lp(f[6]), claim_member(f[7], id)) end
    if f[6] and f[10] then redis.call('ZREM', K_DELAYED .. lp(f[6]), claim_member(f[7], id)) end
  else
    local meta = redis.call('HGET', K_EXPIRING, id)
    keys = meta and cjson.decode(meta) or {{}}
  end
  for _, k in ipairs(keys) do redis.call('ZREM', k, id) end
  for _, s in ipairs(STATUSES) do redis.call('ZREM', K_STATUS .. s, id) end
  redis.call('ZREM', K_CREATED, id)
  redis.call('ZREM', K_FINISHED, id)
  redis.call('ZREM', K_DEAD, id)
  redis.call('HDEL', K_EXPIRING, id)
  redis.call('DEL', rk, K_OUT .. id)
end

-- Unindex, in bounded steps, the runs whose finished_ttl has run out: their hashes are
-- expiring (or gone). True when more remain.
local function sweep()
  if TTL <= 0 then return false end
  local ids = redis.call('ZRANGEBYSCORE', K_FINISHED, '-inf', '(' .. num(now_us() - TTL),
    'LIMIT', 0, {SWEEP_CHUNK})
  for _, id in ipairs(ids) do purge(id) end
  return #ids == {SWEEP_CHUNK}
end

-- Bookkeeping of a terminal run: its age in K_FINISHED and, under finished_ttl, its expiry.
local function settle(id, f)
  local rk = K_RUN .. id
  f = f or redis.call('HMGET', rk, 'finished_at', 'created_at', 'name', 'group', 'tags',
    'task')
  local age = f[1] or f[2]
  if TTL <= 0 then
    redis.call('ZADD', K_FINISHED, age, id)
    return
  end
  local meta = cjson.encode(attr_keys(f[3], f[4], f[5], f[6]))
  local deadline = math.ceil((tonumber(age) + TTL) / 1000)
  if deadline * 1000 <= now_us() then
    purge(id)
    return
  end
  redis.call('ZADD', K_FINISHED, age, id)
  redis.call('PEXPIREAT', rk, num(deadline))
  redis.call('PEXPIREAT', K_OUT .. id, num(deadline))
  redis.call('HSET', K_EXPIRING, id, meta)
end

-- Insert a run unless its id exists. fields: name -> stored string.
local function insert(id, fields)
  local rk = K_RUN .. id
  if redis.call('EXISTS', rk) == 1 then return false end
  local keys = attr_keys(fields.name, fields.group, fields.tags, fields.task)
  -- leftovers of an expired run with this id would otherwise unindex the new one
  if redis.call('ZSCORE', K_FINISHED, id) then purge(id) end
  local args = {{}}
  for f, v in pairs(fields) do
    args[#args + 1] = f
    args[#args + 1] = v
  end
  redis.call('HSET', rk, unpack(args))
  local c = fields.created_at
  redis.call('ZADD', K_CREATED, c, id)
  redis.call('ZADD', K_STATUS .. fields.status, c, id)
  if fields.status == 'queued' then depth(fields.priority, 1) end
  for _, k in ipairs(keys) do redis.call('ZADD', k, c, id) end
  if fields.dead == '1' then redis.call('ZADD', K_DEAD, c, id) end
  claimable(id, fields.task, fields.status, fields.owner, c, fields.priority, fields.not_before)
  if fields.owner then
    owner_index(id, false, false, fields.owner, fields.status, fields.finished_at)
  end
  if TERMINAL[fields.status] then settle(id) end
  return true
end

-- The fields of a run that apply needs: status, name, group, tags, created_at, owner,
-- finished_at, task, priority, not_before (in that order).
local function current(id)
  return redis.call('HMGET', K_RUN .. id, 'status', 'name', 'group', 'tags', 'created_at',
    'owner', 'finished_at', 'task', 'priority', 'not_before')
end

-- Compare-and-set (to: new status, expect: list of statuses) or, without to, a plain
-- update; set: field -> string, del: fields to clear; cur: what current(id) returns, if
-- the caller read it. False if missing or no match.
local function apply(id, to, expect, set, del, cur)
  local rk = K_RUN .. id
  cur = cur or current(id)
  local status = cur[1]
  if not status then return false end
  if to then
    local ok = false
    for _, s in ipairs(expect or {{}}) do if s == status then ok = true end end
    if not ok then return false end
  end
  set = set or {{}}
  del = del or {{}}
  local retag = set.tags ~= nil
  for _, f in ipairs(del) do if f == 'tags' then retag = true end end
  local old_keys, new_keys
  if retag then
    old_keys = attr_keys(cur[2], cur[3], cur[4], cur[8])
    new_keys = attr_keys(cur[2], cur[3], set.tags or false, cur[8])
  end
  local args = {{}}
  for f, v in pairs(set) do
    args[#args + 1] = f
    args[#args + 1] = v
  end
  if to then
    args[#args + 1] = 'status'
    args[#args + 1] = to
  end
  if #args > 0 then redis.call('HSET', rk, unpack(args)) end
  if #del > 0 then redis.call('HDEL', rk, unpack(del)) end
  if retag then
    for _, k in ipairs(old_keys) do redis.call('ZREM', k, id) end
    for _, k in ipairs(new_keys) do redis.call('ZADD', k, cur[5], id) end
  end
  if to then
    redis.call('ZREM', K_STATUS .. status, id)
    redis.call('ZADD', K_STATUS .. to, cur[5], id)
  end
  if set.dead == '1' then
    redis.call('ZADD', K_DEAD, cur[5], id)
  elseif set.dead then
    redis.call('ZREM', K_DEAD, id)
  end
  local now_status, priority = to or status, set.priority or cur[9]
  if status ~= now_status or priority ~= cur[9] then
    if status == 'queued' then depth(cur[9], -1) end
    if now_status == 'queued' then depth(priority, 1) end
  end
  local owner = cur[6]
  if set.owner then owner = set.owner end
  for _, f in ipairs(del) do if f == 'owner' then owner = false end end
  if to or owner ~= cur[6] then
    owner_index(id, cur[6], status, owner, to or status, set.finished_at or cur[7])
  end
  claimable(id, cur[8], to or status, owner, cur[5], set.priority or cur[9], cur[10],
    status == 'queued' and not cur[6])
  if TERMINAL[to or status] then
    local finished, tags = set.finished_at or cur[7], cur[4]
    for _, f in ipairs(del) do if f == 'finished_at' then finished = false end end
    if retag then tags = set.tags or false end
    settle(id, {{finished, cur[5], cur[2], cur[3], tags, cur[8]}})
  end
  return true
end
"""

#: The helpers every write script starts with (ARGV[1] the prefix, ARGV[2] finished_ttl).
PRELUDE: Final = _PRELUDE
