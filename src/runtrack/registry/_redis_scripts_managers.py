"""The Lua scripts of the managers of `RedisRunRegistry`: register, beat, read, interrupt."""

from __future__ import annotations

from typing import Final

from runtrack._presence import INTERRUPTED
from runtrack.registry._redis_layout import MANAGER_BEATS, MANAGERS
from runtrack.registry._redis_prelude import PRELUDE

__all__ = ["BEAT", "INTERRUPT", "MANAGERS_READ", "REGISTER"]

#: KEYS: the schema key.
#: ARGV: prefix, ttl, owner, the heartbeat (µs) the caller saw, now (µs), the error
#: messages of a RUNNING and of a QUEUED run. If the manager's heartbeat is still the one
#: seen, removes its row and records its RUNNING runs FAILED and its QUEUED runs
#: CANCELLED (RunInterrupted), except durable runs: QUEUED ones are unclaimed (another
#: manager may claim them), RUNNING ones with requeue_on_interrupt go back to QUEUED,
#: unclaimed, attempt + 1. Returns one JSON object per run whose status changed.
INTERRUPT: Final = (
    PRELUDE
    + f"""
local owner, seen, now = ARGV[3], ARGV[4], ARGV[5]
local K_MANAGERS, K_BEATS = P .. '{MANAGERS}', P .. '{MANAGER_BEATS}'
local beat = redis.call('HGET', K_BEATS, owner)
if not beat or string.match(beat, '^(%d+)') ~= seen then return {{}} end
redis.call('HDEL', K_MANAGERS, owner)
redis.call('HDEL', K_BEATS, owner)
local ok = K_OWNER .. lp(owner)
local out = {{}}
for _, id in ipairs(redis.call('SMEMBERS', ok)) do
  local f = redis.call('HMGET', K_RUN .. id, 'status', 'owner', 'name', 'attempt', 'group',
    'task', 'requeue_on_interrupt')
  if f[2] == owner and f[1] == 'queued' and f[6] then
    apply(id, false, nil, {{}}, {{'owner'}})
  elseif f[2] == owner and f[1] == 'running' and f[6] and f[7] == '1' then
    local attempt = tonumber(f[4]) + 1
    apply(id, 'queued', {{'running'}}, {{attempt = num(attempt), error_type = '{INTERRUPTED}',
      error_message = ARGV[6]}}, {{'owner', 'started_at', 'heartbeat_at'}})
    out[#out + 1] = cjson.encode({{id = id, name = f[3], previous = 'running', status = 'queued',
      attempt = attempt, group = f[5]}})
  elseif f[2] == owner and (f[1] == 'running' or f[1] == 'queued') then
    local to, msg = 'cancelled', ARGV[7]
    if f[1] == 'running' then to, msg = 'failed', ARGV[6] end
    apply(id, to, {{f[1]}}, {{finished_at = now, error_type = '{INTERRUPTED}',
      error_message = msg}}, {{}})
    out[#out + 1] = cjson.encode({{id = id, name = f[3], previous = f[1], status = to,
      attempt = tonumber(f[4]), group = f[5]}})
  else
    redis.call('SREM', ok, id)
  end
end
return out
"""
)

#: KEYS: managers, manager-beats. ARGV: owner, "heartbeat_at_us:running". Returns 1, or
#: 0 if the row is gone.
BEAT: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

#: KEYS: managers, manager-beats. ARGV: owner, then its fixed fields (JSON) and
#: "heartbeat_at_us:running" to register it, or nothing more to unregister it.
REGISTER: Final = """
if ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
"""

#: KEYS: managers, manager-beats. Returns {fields of every manager, beats of every manager}
#: as two flat lists, read at one instant.
MANAGERS_READ: Final = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""
