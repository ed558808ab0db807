"""The Lua scripts of run output in `RedisRunRegistry`: `APPEND`, `OUTPUT` and `TRIM`."""

from __future__ import annotations

from typing import Final

from runtrack.registry._redis_layout import OP_TTL_MS, OUT, RUN
from runtrack.registry._redis_prelude import PRELUDE

__all__ = ["APPEND", "OUTPUT", "TRIM"]

#: KEYS: the schema key. ARGV: prefix, ttl, token, run_id, then the encoded chunks.
#: Returns the seq of the last
#: chunk (the length of the output list plus the chunks trimmed before it), or -1 if the
#: run does not exist.
APPEND: Final = (
    PRELUDE
    + f"""
local opk = K_OP .. ARGV[3]
local done = redis.call('GET', opk)
if done then return tonumber(done) end
local rk = K_RUN .. ARGV[4]
if redis.call('EXISTS', rk) == 0 then return -1 end
local ok = K_OUT .. ARGV[4]
local n = redis.call('LLEN', ok)
for i = 5, #ARGV, 1000 do
  n = redis.call('RPUSH', ok, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
n = n + tonumber(redis.call('HGET', rk, 'out_trimmed') or '0')
local expires = redis.call('PEXPIRETIME', rk)
if expires > 0 then redis.call('PEXPIREAT', ok, expires) end
redis.call('SET', opk, n, 'PX', {OP_TTL_MS})
return n
"""
)

#: KEYS: the schema key. ARGV: prefix, run_id, since, limit (0: none).
#: Returns {trimmed, chunk, chunk, ...}: the
#: chunks with seq > since, the first one's seq being max(since, trimmed) + 1.
OUTPUT: Final = """
local trimmed = tonumber(redis.call('HGET', ARGV[1] .. '{RUN}' .. ARGV[2], 'out_trimmed') or '0')
local start = math.max(tonumber(ARGV[3]) - trimmed, 0)
local stop = -1
if tonumber(ARGV[4]) > 0 then stop = start + tonumber(ARGV[4]) - 1 end
local out = redis.call('LRANGE', ARGV[1] .. '{OUT}' .. ARGV[2], start, stop)
table.insert(out, 1, trimmed)
return out
""".replace("{RUN}", RUN).replace("{OUT}", OUT)

#: KEYS: the schema key. ARGV: prefix, run_id, keep_from_seq.
#: Deletes the chunks with seq < keep_from_seq but
#: the newest; returns how many went. A run whose hash is gone is left alone.
TRIM: Final = """
local rk = ARGV[1] .. '{RUN}' .. ARGV[2]
local ok = ARGV[1] .. '{OUT}' .. ARGV[2]
if redis.call('EXISTS', rk) == 0 then return 0 end
local n = redis.call('LLEN', ok)
local trimmed = tonumber(redis.call('HGET', rk, 'out_trimmed') or '0')
local doomed = math.min(tonumber(ARGV[3]) - 1 - trimmed, n - 1)
if doomed <= 0 then return 0 end
redis.call('LTRIM', ok, doomed, -1)
redis.call('HINCRBY', rk, 'out_trimmed', doomed)
return doomed
""".replace("{RUN}", RUN).replace("{OUT}", OUT)
