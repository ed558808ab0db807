"""The Redis key layout of `RedisRunRegistry`: the key names its Lua scripts build.

Every key starts with the registry's prefix (``runtrack:`` by default)::

    {prefix}schema                      "1": the layout version, set on first use
    {prefix}run:{run_id}                hash: one run (see ``FIELDS``)
    {prefix}out:{run_id}                list: output chunks, seq = out_trimmed + position + 1
                                        (``out_trimmed``, a field of the run's hash: how
                                        many of its first chunks ``TRIM`` deleted)
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
                                        key (see ``ONCE``)
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

The scripts start with the shared helpers of ``_redis_prelude`` and are grouped by what
they do: ``_redis_scripts_write`` (add and change runs), ``_redis_scripts_read`` (list,
count, queued depth), ``_redis_scripts_output``, ``_redis_scripts_retention`` (cleanup)
and ``_redis_scripts_managers``; ``_redis_claims`` holds the claim scripts.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from runtrack._status import RunStatus

__all__ = [
    "OP_TTL_MS",
    "SCHEMA_VERSION",
    "Keys",
    "cluster_prefix",
    "hash_tag",
    "len_prefixed",
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


def len_prefixed(text: str) -> str:
    """``text`` after its UTF-8 byte length and a colon: one exact value in a key name."""
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
        return self.prefix + IDX_OCANCEL + len_prefixed(owner)

    @property
    def queued_depth(self) -> str:
        """The counts of QUEUED runs by priority."""
        return self.prefix + QUEUED_DEPTH

    def idempotency(self, key: str) -> str:
        """The id of the run holding the idempotency key ``key``."""
        return self.prefix + IDEMPOTENCY + len_prefixed(key)

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
        return self.prefix + IDX_NAME + len_prefixed(name)

    def group(self, group: str) -> str:
        """The index of runs in ``group``."""
        return self.prefix + IDX_GROUP + len_prefixed(group)

    @property
    def dead(self) -> str:
        """The index of runs with ``dead`` set."""
        return self.prefix + IDX_DEAD

    def claim(self, task: str) -> str:
        """The unclaimed QUEUED runs of the durable task ``task``."""
        return self.prefix + IDX_CLAIM + len_prefixed(task)

    def delayed(self, task: str) -> str:
        """The unclaimed QUEUED runs of ``task`` not due yet, by ``not_before``."""
        return self.prefix + IDX_DELAYED + len_prefixed(task)

    def task(self, task: str) -> str:
        """The index of the durable runs of ``task``."""
        return self.prefix + IDX_TASK + len_prefixed(task)

    def tag(self, key: str, value: str) -> str:
        """The index of runs tagged ``key=value``."""
        return self.prefix + IDX_TAG + len_prefixed(key) + "=" + value
