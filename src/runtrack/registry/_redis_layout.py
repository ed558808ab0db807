"""The Redis key layout of `RedisRunRegistry` and the Lua scripts that write it.

Every key starts with the registry's prefix (``runtrack:`` by default)::

    {prefix}schema                      "1": the layout version, set on first use
    {prefix}run:{run_id}                hash: one run (see ``FIELDS``)
    {prefix}out:{run_id}                list: output chunks, seq = out_trimmed + position + 1
                                        (``out_trimmed``, a field of the run's hash: how
                                        many of its first chunks `TRIM` deleted)
    {prefix}idx:created                 zset: every run, scored by created_at (µs)
    {prefix}idx:status:{status}         zset: runs in that status, scored by created_at
    {prefix}idx:name:{n}:{name}         zset: runs of that name, scored by created_at
    {prefix}idx:group:{n}:{group}       zset: runs of that group, scored by created_at
    {prefix}idx:tag:{n}:{key}={value}   zset: runs with that tag, scored by created_at
    {prefix}idx:task:{n}:{task}         zset: durable runs of that task, scored by created_at
    {prefix}idx:dead                    zset: runs with dead=true, scored by created_at
    {prefix}idx:claim:{n}:{task}        zset: the unclaimed QUEUED runs of a durable task,
                                        scored by -priority, members "{created_at:020}:{id}"
                                        (oldest first within a priority): what claims pop
    {prefix}idx:delayed:{n}:{task}      zset: the unclaimed QUEUED runs of a durable task
                                        whose not_before had not come when last written,
                                        scored by not_before (µs), members as in
                                        idx:claim: a claim moves the due ones over first
    {prefix}idx:finished                zset: terminal runs, scored by age (finished_at,
                                        else created_at): cleanup and expiry walk it
    {prefix}expiring                    hash: run_id -> JSON list of the run's name, group
                                        and tag index keys, for runs under finished_ttl
    {prefix}idx:owner:{n}:{owner}       set: the QUEUED and RUNNING runs of that owner
    {prefix}idx:ocancel:{n}:{owner}     zset: the CANCELLED runs of that owner, scored by
                                        finished_at (entries over an hour old are trimmed)
    {prefix}managers                    hash: owner -> JSON of a manager's fixed fields
    {prefix}manager-beats               hash: owner -> "heartbeat_at_us:running"
    {prefix}queued-depth                hash: priority -> how many runs are QUEUED with it,
                                        and ``built`` once counted from idx:status:queued
                                        (a layout without it is counted on first read)
    {prefix}idem:{n}:{key}              string: the id of the run holding that idempotency
                                        key (see `ONCE`)
    {prefix}op:{token}                  string: the outcome of one write script call, kept
                                        briefly so a call redis-py retries is not re-applied
    {prefix}tmp:*                       scratch sets of one script call, deleted before it ends

``{n}`` is the UTF-8 byte length of the text after it: run ids, names, groups and tags
are stored verbatim (any character, ``:`` and ``=`` included), and the length prefix makes
every index key name one exact (kind, value) pair, so no value can reach another index.

Scripts build key names from the prefix given in ``ARGV[1]`` (the run and index keys of a
write depend on the stored run, so they cannot all be declared beforehand). Every script
call still declares at least one key: the keys it touches when they are known beforehand
(``BEAT``, the managers scripts), else ``{prefix}schema`` as ``KEYS[1]``, the slot anchor.
On a Redis Cluster the prefix carries a hash tag (`cluster_prefix`: ``{runtrack}:`` for
the default), so every key of a registry hashes to one slot: the declared key routes the
call to the node holding that slot, and every key the script builds is served there. One
registry therefore lives on one node of the cluster; several registries (prefixes) spread
over the nodes.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from runtrack._presence import INTERRUPTED
from runtrack._status import TERMINAL, RunStatus

__all__ = [
    "ADD",
    "APPEND",
    "BATCH",
    "BEAT",
    "CLEANUP",
    "CLEANUP_CHUNK",
    "COUNT",
    "DEPTH",
    "INTERRUPT",
    "LIST",
    "MANAGERS_READ",
    "ONCE",
    "ONE",
    "OUTPUT",
    "PRELUDE",
    "REGISTER",
    "SCHEMA_VERSION",
    "SWEEP_CHUNK",
    "TRIM",
    "WRITE",
    "Keys",
    "cluster_prefix",
    "hash_tag",
]

SCHEMA_VERSION: Final = "1"

SCHEMA: Final = "schema"
RUN: Final = "run:"
OUT: Final = "out:"
IDX_CREATED: Final = "idx:created"
IDX_FINISHED: Final = "idx:finished"
IDX_STATUS: Final = "idx:status:"
IDX_NAME: Final = "idx:name:"
IDX_GROUP: Final = "idx:group:"
IDX_TAG: Final = "idx:tag:"
IDX_TASK: Final = "idx:task:"
IDX_DEAD: Final = "idx:dead"
IDX_CLAIM: Final = "idx:claim:"
IDX_DELAYED: Final = "idx:delayed:"
EXPIRING: Final = "expiring"
OP: Final = "op:"
TMP: Final = "tmp:"
IDX_OWNER: Final = "idx:owner:"
IDX_OCANCEL: Final = "idx:ocancel:"
MANAGERS: Final = "managers"
MANAGER_BEATS: Final = "manager-beats"
IDEMPOTENCY: Final = "idem:"
QUEUED_DEPTH: Final = "queued-depth"

#: How long the outcome of a write call is kept for a retried call to find (ms).
OP_TTL_MS: Final = 120_000
#: Most runs one script call deletes: long cleanups go in several calls, so Redis
#: keeps serving other clients between them.
CLEANUP_CHUNK: Final = 500
#: Most expired runs one read call unindexes before it reads (it calls again for more).
SWEEP_CHUNK: Final = 500

#: Modes of the WRITE script.
ADD: Final = "add"
ONE: Final = "one"
BATCH: Final = "batch"


def hash_tag(prefix: str) -> str | None:
    """The hash tag every key starting with ``prefix`` is hashed by, or None.

    Redis Cluster hashes the text between the first ``{`` and the first ``}`` after it,
    when that text is not empty; the tag counts only if both braces are in the prefix.
    """
    start = prefix.find("{")
    if start < 0:
        return None
    end = prefix.find("}", start + 1)
    if end <= start + 1:
        return None
    return prefix[start + 1 : end]


def cluster_prefix(prefix: str) -> str:
    """``prefix`` as used on a Redis Cluster: with a hash tag, so one registry is one slot.

    A prefix with a hash tag is kept; one without braces is wrapped: ``runtrack:`` becomes
    ``{runtrack}:``, ``app`` becomes ``{app}``.

    Raises:
        ValueError: the prefix is empty, only colons, or has a ``{`` but no hash tag of
            its own (its keys would spread over slots).
    """
    if hash_tag(prefix) is not None:
        return prefix
    if "{" in prefix:
        raise ValueError(
            f"prefix {prefix!r} has a '{{' but no hash tag: on a Redis Cluster give a prefix "
            "with a complete, non-empty hash tag ('{myapp}:') or no braces at all"
        )
    stem = prefix.rstrip(":")
    if not stem:
        raise ValueError(
            f"prefix {prefix!r} cannot be hash-tagged: on a Redis Cluster give a prefix "
            "with some text ('myapp:' or '{myapp}:')"
        )
    return "{" + stem + "}" + prefix[len(stem) :]


def _len_prefixed(text: str) -> str:
    return f"{len(text.encode())}:{text}"


@dataclasses.dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one prefix (the Lua scripts build the same names)."""

    prefix: str

    @property
    def schema(self) -> str:
        """The schema version key."""
        return self.prefix + SCHEMA

    @property
    def created(self) -> str:
        """The index of every run by creation time."""
        return self.prefix + IDX_CREATED

    @property
    def finished(self) -> str:
        """The index of terminal runs by age."""
        return self.prefix + IDX_FINISHED

    @property
    def expiring(self) -> str:
        """The index keys of runs under ``finished_ttl``."""
        return self.prefix + EXPIRING

    @property
    def managers(self) -> str:
        """The fixed fields of every manager, by owner."""
        return self.prefix + MANAGERS

    @property
    def manager_beats(self) -> str:
        """The heartbeat and running count of every manager, by owner."""
        return self.prefix + MANAGER_BEATS

    def owner_cancelled(self, owner: str) -> str:
        """The CANCELLED runs of ``owner`` by finished_at."""
        return self.prefix + IDX_OCANCEL + _len_prefixed(owner)

    @property
    def queued_depth(self) -> str:
        """The counts of QUEUED runs by priority."""
        return self.prefix + QUEUED_DEPTH

    def idempotency(self, key: str) -> str:
        """The id of the run holding the idempotency key ``key``."""
        return self.prefix + IDEMPOTENCY + _len_prefixed(key)

    def run(self, run_id: str) -> str:
        """The hash of one run."""
        return self.prefix + RUN + run_id

    def out(self, run_id: str) -> str:
        """The output list of one run."""
        return self.prefix + OUT + run_id

    def status(self, status: RunStatus) -> str:
        """The index of runs in ``status``."""
        return self.prefix + IDX_STATUS + status.value

    def name(self, name: str) -> str:
        """The index of runs named ``name``."""
        return self.prefix + IDX_NAME + _len_prefixed(name)

    def group(self, group: str) -> str:
        """The index of runs in ``group``."""
        return self.prefix + IDX_GROUP + _len_prefixed(group)

    @property
    def dead(self) -> str:
        """The index of runs with ``dead`` set."""
        return self.prefix + IDX_DEAD

    def claim(self, task: str) -> str:
        """The unclaimed QUEUED runs of the durable task ``task``."""
        return self.prefix + IDX_CLAIM + _len_prefixed(task)

    def delayed(self, task: str) -> str:
        """The unclaimed QUEUED runs of ``task`` not due yet, by ``not_before``."""
        return self.prefix + IDX_DELAYED + _len_prefixed(task)

    def task(self, task: str) -> str:
        """The index of the durable runs of ``task``."""
        return self.prefix + IDX_TASK + _len_prefixed(task)

    def tag(self, key: str, value: str) -> str:
        """The index of runs tagged ``key=value``."""
        return self.prefix + IDX_TAG + _len_prefixed(key) + "=" + value


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

local function claimable(id, task, status, owner, created, priority, not_before)
  if not task then return end
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
local function settle(id)
  local rk = K_RUN .. id
  local f = redis.call('HMGET', rk, 'finished_at', 'created_at', 'name', 'group', 'tags',
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

-- Compare-and-set (to: new status, expect: list of statuses) or, without to, a plain
-- update; set: field -> string, del: fields to clear. False if missing or no match.
local function apply(id, to, expect, set, del)
  local rk = K_RUN .. id
  local cur = redis.call('HMGET', rk, 'status', 'name', 'group', 'tags', 'created_at', 'owner',
    'finished_at', 'task', 'priority', 'not_before')
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
  claimable(id, cur[8], to or status, owner, cur[5], set.priority or cur[9], cur[10])
  if TERMINAL[to or status] then settle(id) end
  return true
end
"""

#: The helpers every write script starts with (ARGV[1] the prefix, ARGV[2] finished_ttl).
PRELUDE: Final = _PRELUDE

#: KEYS: the schema key. ARGV: prefix, ttl, token, mode, then a JSON array of writes, each
#: {"id", "ins": {field: str}, "to", "exp": [status], "set": {field: str}, "del": [field]}.
#: add: insert only, returns 1 or 0. one: returns the run's hash after the write, or nil.
#: batch: each write in order, returns 1 or 0 per write: an insert applies if the id is
#: absent, else falls through to its compare-and-set (without ``to``, it does not apply);
#: a field-only write applies if the run exists.
WRITE: Final = (
    _PRELUDE
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

#: KEYS: the schema key. ARGV: prefix, ttl, token, run_id, then the encoded chunks.
#: Returns the seq of the last
#: chunk (the length of the output list plus the chunks trimmed before it), or -1 if the
#: run does not exist.
APPEND: Final = (
    _PRELUDE
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

#: KEYS: the schema key, then name/group/tag/task index keys that must all match. ARGV:
#: prefix, ttl, limit, offset, an index key whose runs are left out ('' for none), then the
#: wanted statuses (none: any). Returns {1} if it only swept (call again), else
#: {0, hash, hash, ...} newest first.
LIST: Final = (
    _PRELUDE
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
    _PRELUDE
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

#: KEYS: the schema key.
#: ARGV: prefix, ttl, cutoff (µs), keep, skip, then the terminal statuses to clean.
#: Walks K_FINISHED oldest first from rank ``skip`` (runs of other statuses are skipped
#: and counted in it) and deletes runs older than cutoff, sparing the newest ``keep``.
#: Returns {1} if it only swept, else {0, deleted, skip, done}.
CLEANUP: Final = (
    _PRELUDE
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

#: ARGV: prefix, ttl, the key's ttl (µs), the idempotency key, run_id, the run's fields
#: as JSON. Inserts the run and makes it the key's holder, unless the key's holder exists
#: and is not finished, or finished less than the key's ttl ago. Returns {1} (inserted),
#: {2} (the run id exists), or {0, the holder's hash}.
ONCE: Final = (
    _PRELUDE
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

#: ARGV: prefix, ttl. Returns the flat list priority, count, ... of the QUEUED runs,
#: counting them from the status index once if the counts were never built.
DEPTH: Final = (
    _PRELUDE
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

#: KEYS: the schema key.
#: ARGV: prefix, ttl, owner, the heartbeat (µs) the caller saw, now (µs), the error
#: messages of a RUNNING and of a QUEUED run. If the manager's heartbeat is still the one
#: seen, removes its row and records its RUNNING runs FAILED and its QUEUED runs
#: CANCELLED (RunInterrupted), except durable runs: QUEUED ones are unclaimed (another
#: manager may claim them), RUNNING ones with requeue_on_interrupt go back to QUEUED,
#: unclaimed, attempt + 1. Returns one JSON object per run whose status changed.
INTERRUPT: Final = (
    _PRELUDE
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
