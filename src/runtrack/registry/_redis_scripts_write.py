"""The Lua scripts that add and change runs of `RedisRunRegistry`: `WRITE` and `ONCE`."""

from __future__ import annotations

from typing import Final

from runtrack.registry._redis_layout import OP_TTL_MS
from runtrack.registry._redis_prelude import PRELUDE

__all__ = ["ADD", "BATCH", "ONCE", "ONE", "WRITE"]

#: Modes of the WRITE script.
ADD: Final = "add"
ONE: Final = "one"
BATCH: Final = "batch"

#: KEYS: the schema key. ARGV: prefix, ttl, token, mode, then a JSON array of writes, each
#: {"id", "ins": {field: str}, "to", "exp": [status], "own": owner, "set": {field: str},
#: "del": [field]}.
#: add: insert only, returns 1 or 0. one: returns the run's hash after the write, or nil.
#: batch: each write in order, returns 1 or 0 per write: an insert applies if the id is
#: absent, else falls through to its compare-and-set (without ``to``, it does not apply);
#: a field-only write applies if the run exists. A compare-and-set with ``own`` applies
#: only if the run's owner is that one (see `RunWrite.owner`).
WRITE: Final = (
    PRELUDE
    + f"""
local token, mode = ARGV[3], ARGV[4]
local opk = K_OP .. token

local function reply(flags)
  if mode == '{BATCH}' then
    local r = {{}}
    for i = 1, #flags do r[i] = tonumber(string.sub(flags, i, i)) end
    return r
  elseif mode == '{ADD}' then
    return tonumber(flags)
  elseif flags == '1' then
    return redis.call('HGETALL', K_RUN .. cjson.decode(ARGV[5])[1].id)
  end
  return false
end

local done = redis.call('GET', opk)
if done then return reply(done) end

local writes = cjson.decode(ARGV[5])
local flags = {{}}
for i, w in ipairs(writes) do
  local ok
  if mode == '{ADD}' then
    ok = insert(w.id, w.ins)
  elseif w.ins and redis.call('EXISTS', K_RUN .. w.id) == 0 then
    ok = insert(w.id, w.ins)
  elseif w.ins and not w.to then
    ok = false
  elseif w.to and w.own then
    local cur = current(w.id)
    ok = cur[6] == w.own and apply(w.id, w.to, w.exp, w.set, w.del, cur)
  else
    ok = apply(w.id, w.to, w.exp, w.set, w.del)
  end
  flags[i] = ok and '1' or '0'
end
flags = table.concat(flags)
redis.call('SET', opk, flags, 'PX', {OP_TTL_MS})
return reply(flags)
"""
)

#: ARGV: prefix, ttl, the key's ttl (µs), the idempotency key, run_id, the run's fields
#: as JSON. Inserts the run and makes it the key's holder, unless the key's holder exists
#: and is not finished, or finished less than the key's ttl ago. Returns {1} (inserted),
#: {2} (the run id exists), or {0, the holder's hash}.
ONCE: Final = (
    PRELUDE
    + """
local kk = K_IDEM .. lp(ARGV[4])
local holder = redis.call('GET', kk)
if holder then
  local f = redis.call('HMGET', K_RUN .. holder, 'status', 'finished_at', 'created_at')
  if f[1] and (not TERMINAL[f[1]] or tonumber(f[2] or f[3]) > now_us() - tonumber(ARGV[3])) then
    return {0, redis.call('HGETALL', K_RUN .. holder)}
  end
end
if not insert(ARGV[5], cjson.decode(ARGV[6])) then return {2} end
redis.call('SET', kk, ARGV[5])
return {1}
"""
)
