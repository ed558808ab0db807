"""`InMemoryRunRegistry`: the default registry, living in the process's memory."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final, Self

from runtrack._clock import dt_to_us, now_us, us_to_dt
from runtrack._exceptions import DuplicateRunError, RunNotFoundError
from runtrack._models import OutputChunk, Run
from runtrack._status import TERMINAL, RunStatus, check_transition, normalize_statuses
from runtrack.registry._idempotency import check_once_args, key_holds
from runtrack.registry._memory_claims import MemoryClaims
from runtrack.registry._memory_managers import MemoryManagers
from runtrack.registry.base import (
    TIME_FIELDS,
    OutputItem,
    RunWrite,
    StatusFilter,
    check_keep_from_seq,
    is_int,
    stored_run,
    validate_changes,
    validate_cleanup_args,
    validate_list_args,
    validate_output,
    validate_output_args,
)

__all__ = ["InMemoryRunRegistry"]

#: Records `InMemoryRunRegistry.queue_depth` reads between two yields to the event loop.
_DEPTH_SLICE: Final = 20_000


class _Record:
    """A run as stored here: slotted, timestamps as integer microseconds, {} kept as None.

    The manager's jobs subclass it, so a job it starts on this registry is stored as is,
    with no copy and no lookup per status change.
    """

    __slots__ = (
        "args",
        "attempt",
        "created_at",
        "dead",
        "error_message",
        "error_type",
        "finished_at",
        "group",
        "heartbeat_at",
        "idempotency_key",
        "max_attempts",
        "name",
        "not_before",
        "owner",
        "parameters",
        "priority",
        "progress",
        "progress_message",
        "requeue_on_interrupt",
        "requeued_from",
        "result",
        "run_id",
        "started_at",
        "status",
        "tags",
        "task",
        "timeout",
    )

    run_id: str
    name: str
    status: RunStatus
    created_at: int
    started_at: int | None
    finished_at: int | None
    parameters: dict[str, Any] | None
    tags: dict[str, str] | None
    group: str | None
    priority: int
    timeout: float | None
    attempt: int
    max_attempts: int
    progress: float | None
    progress_message: str | None
    result: Any
    error_type: str | None
    error_message: str | None
    owner: str | None
    heartbeat_at: int | None
    task: str | None
    args: dict[str, Any] | None
    idempotency_key: str | None
    dead: bool
    requeued_from: str | None
    requeue_on_interrupt: bool
    not_before: int | None

    def to_run(self) -> Run:
        data: dict[str, Any] = {}
        for field in _FIELDS:
            value = getattr(self, field)
            data[field] = us_to_dt(value) if field in TIME_FIELDS and value is not None else value
        data["parameters"] = dict(self.parameters or {})
        data["tags"] = dict(self.tags or {})
        if self.args is not None:
            data["args"] = copy.deepcopy(self.args)
        return Run.model_validate(data)

    @property
    def age_us(self) -> int:
        return self.finished_at if self.finished_at is not None else self.created_at


_FIELDS = _Record.__slots__


def _rec_from_run(run: Run) -> _Record:
    return _rec_from_stored(stored_run(run))


def _rec_from_stored(stored: Mapping[str, Any]) -> _Record:
    rec = _Record()
    for field in _FIELDS:
        setattr(rec, field, stored[field])
    rec.status = RunStatus(rec.status)
    # Deep copies: the caller's objects must not share nested data with the stored record.
    rec.parameters = copy.deepcopy(rec.parameters) or None
    rec.tags = dict(rec.tags or {}) or None
    rec.result = copy.deepcopy(rec.result)
    rec.args = copy.deepcopy(rec.args)
    return rec


def _set_fields(rec: _Record, changes: Mapping[str, Any]) -> None:
    for field, value in changes.items():
        if field in TIME_FIELDS and value is not None and not is_int(value):
            setattr(rec, field, dt_to_us(value))
        elif field == "tags":
            setattr(rec, field, dict(value) or None)
        else:
            setattr(rec, field, value)


class InMemoryRunRegistry(MemoryManagers, MemoryClaims):
    """A `RunRegistry` in this process's memory: fast, and gone when the process ends.

    Managers in the same process (and event loop) may share one. Runs are kept until
    `cleanup_old_runs` removes them; each finished run costs well under 1 KiB.

    Example:
        >>> import asyncio
        >>> from runtrack import InMemoryRunRegistry, Run
        >>> async def main() -> str:
        ...     async with InMemoryRunRegistry() as registry:
        ...         await registry.add_run(Run(run_id="r1", name="demo"))
        ...         run = await registry.get_run("r1")
        ...         return run.status.value
        >>> asyncio.run(main())
        'queued'
    """

    def __init__(self) -> None:
        self._runs: dict[str, _Record] = {}
        self._output: dict[str, list[OutputChunk]] = {}
        self._trimmed: dict[str, int] = {}  # run_id -> how many of its first chunks went
        # True while runs were inserted in created_at order: list_runs can then walk
        # the dict backwards instead of sorting.
        self._in_order = True
        self._last_created = 0
        self._keys: dict[str, str] = {}  # idempotency key -> the id of the run holding it

    _record_of = staticmethod(_rec_from_run)

    def __repr__(self) -> str:
        return f"<InMemoryRunRegistry runs={len(self._runs)}>"

    # -- the fast path the manager uses (synchronous, same semantics) -----------------

    def _insert(self, rec: _Record) -> bool:
        if rec.run_id in self._runs:
            return False
        self._runs[rec.run_id] = rec
        if rec.created_at < self._last_created:
            self._in_order = False
        else:
            self._last_created = rec.created_at
        return True

    def _cas(
        self,
        run_id: str,
        to: RunStatus,
        expect: frozenset[RunStatus],
        changes: dict[str, Any],
        owner: str | None = None,
    ) -> _Record | None:
        """Move the run to ``to`` if its status is in ``expect`` (and its owner is ``owner``)."""
        rec = self._runs.get(run_id)
        if rec is None or rec.status not in expect:
            return None
        if owner is not None and rec.owner != owner:
            return None
        rec.status = to
        for field, value in changes.items():
            setattr(rec, field, value)
        return rec

    def _update(self, run_id: str, changes: dict[str, Any]) -> bool:
        rec = self._runs.get(run_id)
        if rec is None:
            return False
        for field, value in changes.items():
            setattr(rec, field, value)
        return True

    # -- RunRegistry ----------------------------------------------------------------------

    async def add_run(self, run: Run) -> None:
        """Insert a new run.

        Raises:
            TypeError: ``run`` is not a `Run`.
            DuplicateRunError: a run with this id exists.
        """
        if not isinstance(run, Run):
            raise TypeError(f"add_run() takes a runtrack.Run, got {type(run).__name__}")
        if not self._insert(_rec_from_run(run)):
            raise DuplicateRunError(run.run_id)

    async def add_run_once(self, run: Run, *, ttl: timedelta) -> tuple[Run, bool]:
        """Insert ``run`` unless its idempotency key is held (see `IdempotentAdding`)."""
        key, window = check_once_args(run, ttl)
        holder = self._runs.get(self._keys.get(key, ""))
        if holder is not None and key_holds(
            holder.status, holder.finished_at, holder.created_at, now_us(), window
        ):
            return holder.to_run(), False
        await self.add_run(run)
        self._keys[key] = run.run_id
        return run, True

    async def queue_depth(self) -> dict[int, int]:
        """QUEUED runs by priority (see `QueueDepthReading`).

        A walk of every record, in slices between which the event loop runs others: the
        figure of a registry that changes meanwhile is approximate.
        """
        records = list(self._runs.values())
        depth: Counter[int] = Counter()
        queued = RunStatus.QUEUED
        for start in range(0, len(records), _DEPTH_SLICE):
            if start:
                await asyncio.sleep(0)
            depth.update(
                r.priority for r in records[start : start + _DEPTH_SLICE] if r.status is queued
            )
        return dict(sorted(depth.items()))

    async def write_batch(self, writes: Sequence[RunWrite]) -> list[bool]:
        """Apply writes in order, each atomically (see `BatchWriting`)."""
        applied: list[bool] = []
        for write in writes:
            rec = self._runs.get(write.run_id)
            record = write.record()
            if record is not None and rec is None:
                applied.append(self._insert(_rec_from_stored(record)))
                continue
            if (
                rec is None
                or (write.to is None and record is not None)
                or (
                    write.to is not None
                    and (
                        rec.status not in write.expect
                        or (write.owner is not None and rec.owner != write.owner)
                    )
                )
            ):
                applied.append(False)
                continue
            if write.to is not None:
                rec.status = write.to
            _set_fields(rec, write.changes)
            applied.append(True)
        return applied

    async def get_statuses(self, run_ids: Sequence[str]) -> dict[str, RunStatus]:
        """The status of each existing run in ``run_ids`` (see `StatusReading`)."""
        runs = self._runs
        return {run_id: runs[run_id].status for run_id in run_ids if run_id in runs}

    async def get_run(self, run_id: str) -> Run | None:
        """Return the run with this id, or None."""
        rec = self._runs.get(run_id)
        return None if rec is None else rec.to_run()

    async def transition(
        self,
        run_id: str,
        to: RunStatus | str,
        /,
        *,
        expect: StatusFilter = None,
        **changes: Any,
    ) -> Run | None:
        """Move a run to ``to`` if its status is in ``expect`` (see `RunRegistry`)."""
        target, expected = check_transition(to, expect)
        valid = validate_changes(changes)
        rec = self._runs.get(run_id)
        if rec is None or rec.status not in expected:
            return None
        rec.status = target
        _set_fields(rec, valid)
        return rec.to_run()

    async def update_run(self, run_id: str, /, **changes: Any) -> Run:
        """Set non-status fields and return the updated run (see `RunRegistry`)."""
        valid = validate_changes(changes)
        rec = self._runs.get(run_id)
        if rec is None:
            raise RunNotFoundError(run_id)
        _set_fields(rec, valid)
        return rec.to_run()

    async def list_runs(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        group: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
        task: str | None = None,
        dead: bool | None = None,
    ) -> list[Run]:
        """Runs matching every filter, newest first (see `RunRegistry`)."""
        validate_list_args(limit, offset)
        statuses = normalize_statuses(status)
        wanted_tags = dict(tags or {})
        out: list[Run] = []
        skipped = 0
        for rec in self._newest_first():
            if statuses is not None and rec.status not in statuses:
                continue
            if name is not None and rec.name != name:
                continue
            if group is not None and rec.group != group:
                continue
            if task is not None and rec.task != task:
                continue
            if dead is not None and rec.dead != dead:
                continue
            if wanted_tags:
                have = rec.tags or {}
                if any(have.get(k) != v for k, v in wanted_tags.items()):
                    continue
            if skipped < offset:
                skipped += 1
                continue
            out.append(rec.to_run())
            if len(out) >= limit:
                break
        return out

    def _newest_first(self) -> Iterable[_Record]:
        if self._in_order:
            return reversed(self._runs.values())
        # Newest first; among equal created_at, the last inserted first (as in the fast path).
        newest = list(reversed(self._runs.values()))
        newest.sort(key=lambda r: r.created_at, reverse=True)
        return newest

    async def count_runs(self, *, name: str | None = None) -> dict[RunStatus, int]:
        """How many runs are in each status (see `RunRegistry`)."""
        counts = dict.fromkeys(RunStatus, 0)
        for rec in self._runs.values():
            if name is None or rec.name == name:
                counts[rec.status] += 1
        return counts

    async def append_output(self, run_id: str, chunks: Iterable[OutputItem]) -> list[OutputChunk]:
        """Append chunks, numbered from 1 per run (see `RunRegistry`)."""
        items = validate_output(chunks)
        if run_id not in self._runs:
            raise RunNotFoundError(run_id)
        stored = self._output.setdefault(run_id, [])
        at = us_to_dt(now_us())
        last = self._trimmed.get(run_id, 0) + len(stored)
        new = [
            OutputChunk(seq=last + i, stream=stream, text=text, at=at)
            for i, (stream, text) in enumerate(items, start=1)
        ]
        stored.extend(new)
        return new

    async def get_output(
        self, run_id: str, *, since: int = 0, limit: int | None = None
    ) -> list[OutputChunk]:
        """Chunks with ``seq > since``, oldest first (see `RunRegistry`)."""
        validate_output_args(since, limit)
        chunks = self._output.get(run_id, [])[max(since - self._trimmed.get(run_id, 0), 0) :]
        return chunks if limit is None else chunks[:limit]

    async def trim_output(self, run_id: str, *, keep_from_seq: int) -> int:
        """Delete the chunks with ``seq < keep_from_seq`` but the newest (see `OutputTrimming`)."""
        check_keep_from_seq(keep_from_seq)
        stored = self._output.get(run_id)
        if not stored:
            return 0
        trimmed = self._trimmed.get(run_id, 0)
        doomed = min(keep_from_seq - 1 - trimmed, len(stored) - 1)
        if doomed <= 0:
            return 0
        del stored[:doomed]
        self._trimmed[run_id] = trimmed + doomed
        return doomed

    async def cleanup_old_runs(
        self,
        *,
        older_than: timedelta,
        statuses: StatusFilter = TERMINAL,
        keep: int = 0,
    ) -> int:
        """Delete finished runs older than ``older_than`` (see `RunRegistry`)."""
        cutoff, wanted = validate_cleanup_args(older_than, keep, statuses)
        candidates = [r for r in self._runs.values() if r.status in wanted]
        candidates.sort(key=lambda r: r.age_us, reverse=True)
        doomed = [r.run_id for r in candidates[keep:] if r.age_us < cutoff]
        for run_id in doomed:
            rec = self._runs.pop(run_id)
            if rec.idempotency_key is not None and self._keys.get(rec.idempotency_key) == run_id:
                del self._keys[rec.idempotency_key]
            self._output.pop(run_id, None)
            self._trimmed.pop(run_id, None)
        return len(doomed)

    async def aclose(self) -> None:
        """Nothing to release; the runs stay readable."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
