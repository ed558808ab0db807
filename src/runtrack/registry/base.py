"""The `RunRegistry` protocol every backend implements, and helpers the backends share."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from runtrack._clock import dt_to_us, now_us
from runtrack._models import (
    Attempt,
    Json,
    OutputChunk,
    Priority,
    Progress,
    Run,
    Seconds,
    Tags,
    UTCDatetime,
)
from runtrack._presence import InterruptedRun, ManagerInfo
from runtrack._status import TERMINAL, RunStatus, normalize_statuses
from runtrack.registry._notifying import NotificationListener, Notifying

__all__ = [
    "MUTABLE_FIELDS",
    "RUN_FIELDS",
    "TIME_FIELDS",
    "BatchWriting",
    "ManagerPresence",
    "NotificationListener",
    "Notifying",
    "OutputItem",
    "OutputTrimming",
    "RunRegistry",
    "RunWrite",
    "StatusFilter",
    "StatusReading",
    "check_keep_from_seq",
    "is_int",
    "stored_run",
    "validate_changes",
    "validate_cleanup_args",
    "validate_list_args",
    "validate_output",
    "validate_output_args",
]

StatusFilter = RunStatus | str | Iterable[RunStatus | str] | None
#: An output chunk given to `RunRegistry.append_output`: a ``(stream, text)`` pair or an
#: `OutputChunk` (whose ``seq`` and ``at`` the registry replaces).
OutputItem = tuple[str, str] | OutputChunk

#: Fields that ``transition(**changes)`` and ``update_run(**changes)`` may set.
MUTABLE_FIELDS: Final = frozenset(
    {
        "attempt",
        "dead",
        "error_message",
        "error_type",
        "finished_at",
        "heartbeat_at",
        "max_attempts",
        "owner",
        "priority",
        "progress",
        "progress_message",
        "result",
        "started_at",
        "tags",
        "timeout",
    }
)


#: Every `Run` field, in the order `stored_run` lists them.
RUN_FIELDS: Final = tuple(Run.model_fields)
#: The `Run` fields holding timestamps.
TIME_FIELDS: Final = frozenset(
    {"created_at", "started_at", "finished_at", "heartbeat_at", "not_before"}
)


def stored_run(run: Run) -> dict[str, Any]:
    """A run in stored form: every `Run` field, timestamps as integer µs since the epoch.

    The form `RunWrite.stored` carries; ``parameters``, ``tags`` and ``result`` are the
    run's own objects, not copies.
    """
    record = {field: getattr(run, field) for field in RUN_FIELDS}
    for field in TIME_FIELDS:
        value = record[field]
        if value is not None:
            record[field] = dt_to_us(value)
    return record


@dataclasses.dataclass(slots=True)
class RunWrite:
    """One write of a batch given to `BatchWriting.write_batch`.

    The manager's writer coalesces a run's pending lifecycle writes into one `RunWrite`:

    - ``run`` or ``stored`` set: create the run if its id is absent (the full record,
      already carrying the latest status and fields). If the id exists and ``to`` is set,
      fall through to the compare-and-set below, so a run recorded before ``start_task``
      is still updated; if ``to`` is None, the write does not apply (a duplicate id).
    - ``to`` set: compare-and-set, applied only if the stored status is in ``expect``
      (and, with ``owner`` set, only if the stored owner is this one too); ``changes``
      (validated values; timestamps aware UTC datetimes or integer microseconds since
      the epoch) are set in the same write.
    - neither: set ``changes`` on the run if it exists (progress, heartbeat, ...).

    Attributes:
        run_id: The run.
        run: The record to insert when absent, or None.
        to: The target status of the compare-and-set, or None.
        expect: The statuses the compare-and-set may apply from.
        changes: Field values to set (names from `MUTABLE_FIELDS`).
        stored: The record to insert in stored form (see `stored_run`), instead of
            ``run``: what the manager's writer sends, so that no model is built per run.
            Its values were validated when the run was submitted.
        owner: With ``to`` set, the compare-and-set applies only if the stored owner is
            this one too (None: any owner). The manager sets it on a durable run's writes,
            so that a manager the run was taken from (swept while still running it, the
            run claimed again by another) cannot overwrite the new owner's record.
    """

    run_id: str
    run: Run | None = None
    to: RunStatus | None = None
    expect: frozenset[RunStatus] = frozenset()
    changes: dict[str, Any] = dataclasses.field(default_factory=dict)
    stored: Mapping[str, Any] | None = None
    owner: str | None = None

    @property
    def inserts(self) -> bool:
        """Whether this write carries a record to insert."""
        return self.stored is not None or self.run is not None

    def record(self) -> Mapping[str, Any] | None:
        """The record to insert in stored form, or None."""
        if self.stored is not None:
            return self.stored
        return None if self.run is None else stored_run(self.run)


@runtime_checkable
class BatchWriting(Protocol):
    """**Protocol:** a registry that applies many writes in one round trip.

    Registries that implement it (SQL, Redis, memory) get group-committed writes from the
    manager; others get their writes one call at a time. A registry may also have a
    ``batches_in_flight`` attribute: how many ``write_batch`` calls the manager may have
    running at once (default 1; never two with the same run).
    """

    async def write_batch(self, writes: Sequence[RunWrite]) -> list[bool]:
        """Apply ``writes`` in order, each atomically; return whether each one applied.

        An insert applies when the run was absent, or when the compare-and-set it falls
        through to applies (an insert without ``to`` on an existing id does not apply). A
        compare-and-set applies when the stored status is in its ``expect`` and, if its
        ``owner`` is set, the stored owner is that one. A field-only write applies when
        the run exists.

        Raises:
            RegistryUnavailableError: the backend could not be reached; nothing was applied
                (the whole batch is one transaction or one server-side script).
            ValueError: the store refused a value of one of the writes (see the backend's
                page in the docs); nothing was applied. The message names the first run
                and field found at fault; apply the writes one at a time to learn which
                ones the store refuses.
        """
        ...


@runtime_checkable
class StatusReading(Protocol):
    """**Protocol:** a registry that reads the statuses of many runs in one round trip.

    Managers use it at every heartbeat to notice runs cancelled or finished elsewhere;
    registries without it are read one run at a time.
    """

    async def get_statuses(self, run_ids: Sequence[str]) -> dict[str, RunStatus]:
        """The current status of each run in ``run_ids`` that exists (missing ones left out).

        Raises:
            RegistryUnavailableError: the backend could not be reached.
        """
        ...


@runtime_checkable
class OutputTrimming(Protocol):
    """**Protocol:** a registry that can delete the oldest output chunks of a run.

    `BackgroundTaskManager.run_command` uses it to keep no more than ``output_limit`` bytes
    of a command's newest output in the registry; with a registry without it, only the
    output the manager holds in memory is bounded. The memory, SQL and Redis registries
    implement it.
    """

    async def trim_output(self, run_id: str, *, keep_from_seq: int) -> int:
        """Delete the run's chunks with ``seq < keep_from_seq``, except its newest chunk.

        The newest chunk is always kept, and chunks appended later continue the sequence:
        a seq is never given twice. `RunRegistry.get_output` returns the chunks left (with
        ``since=0``, from the oldest one kept). A run that does not exist or has no output
        is not an error.

        Returns:
            How many chunks were deleted.

        Raises:
            ValueError: ``keep_from_seq`` is not an int >= 1.
            RegistryUnavailableError: the backend could not be reached.
        """
        ...


@runtime_checkable
class RunRegistry(Protocol):
    """**Protocol:** where runs are recorded, shared by every manager and reader.

    Every method is ``async``. Implementations: `InMemoryRunRegistry` (the default),
    ``runtrack.registry.sql.SQLRunRegistry`` and ``runtrack.registry.redis.RedisRunRegistry``;
    each passes the same conformance suite. A registry is an async context manager that
    closes itself on exit.
    """

    async def add_run(self, run: Run) -> None:
        """Insert a new run.

        Raises:
            DuplicateRunError: a run with this id exists.
        """
        ...

    async def get_run(self, run_id: str) -> Run | None:
        """Return the run with this id, or None."""
        ...

    async def transition(
        self,
        run_id: str,
        to: RunStatus | str,
        /,
        *,
        expect: StatusFilter = None,
        **changes: Any,
    ) -> Run | None:
        """Atomically move a run to ``to`` if its current status is in ``expect``.

        Args:
            run_id: The run.
            to: The new status.
            expect: Statuses it may move from; default the legal predecessors of ``to``.
            **changes: Other fields to set in the same write (see `MUTABLE_FIELDS`).

        Returns:
            The updated run, or None if the run is missing or its status did not match.

        Raises:
            ValueError: an illegal transition, or a field that cannot change.
        """
        ...

    async def update_run(self, run_id: str, /, **changes: Any) -> Run:
        """Set non-status fields (progress, heartbeat, ...) and return the updated run.

        Raises:
            RunNotFoundError: no such run.
            ValueError: a field that cannot change (``status``: use `transition`).
        """
        ...

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
        """Runs matching every given filter, newest (by ``created_at``) first.

        ``task`` keeps the durable runs of that task; ``dead=True`` the dead-lettered
        runs, ``dead=False`` the others.
        """
        ...

    async def count_runs(self, *, name: str | None = None) -> dict[RunStatus, int]:
        """How many runs are in each status (every status is a key)."""
        ...

    async def append_output(self, run_id: str, chunks: Iterable[OutputItem]) -> list[OutputChunk]:
        """Append chunks; returns them numbered (seq from 1 per run).

        ``chunks`` are ``(stream, text)`` pairs or `OutputChunk`s; the registry assigns
        ``seq`` and ``at`` either way.

        Raises:
            RunNotFoundError: no such run.
            ValueError: a stream name is empty or too long, or the store refuses the text.
        """
        ...

    async def get_output(
        self, run_id: str, *, since: int = 0, limit: int | None = None
    ) -> list[OutputChunk]:
        """Chunks with ``seq > since``, oldest first, at most ``limit`` of them."""
        ...

    async def cleanup_old_runs(
        self,
        *,
        older_than: timedelta,
        statuses: StatusFilter = TERMINAL,
        keep: int = 0,
    ) -> int:
        """Delete finished runs (and their output) that finished over ``older_than`` ago.

        The newest ``keep`` runs among ``statuses`` are kept whatever their age. Runs that
        are not finished are never deleted.

        Returns:
            How many runs were deleted.

        Raises:
            TypeError: ``older_than`` is not a `timedelta`, or ``keep`` not an int.
            ValueError: ``older_than`` or ``keep`` is negative, or a status is unknown.
        """
        ...

    async def aclose(self) -> None:
        """Release connections. Safe to call twice."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


class _Changes(BaseModel):
    """Validates the fields of a change with the same rules as `Run`."""

    model_config = ConfigDict(extra="forbid")

    attempt: Attempt = 1
    dead: bool = False
    error_message: str | None = None
    error_type: str | None = None
    finished_at: UTCDatetime | None = None
    heartbeat_at: UTCDatetime | None = None
    max_attempts: Attempt = 1
    owner: str | None = None
    priority: Priority = 0
    progress: Progress | None = None
    progress_message: str | None = None
    result: Json = None
    started_at: UTCDatetime | None = None
    tags: Tags = Field(default_factory=dict)
    timeout: Seconds | None = None


def validate_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the ``**changes`` of `RunRegistry.transition` / `RunRegistry.update_run`.

    Returns:
        The validated values (datetimes normalised to UTC).

    Raises:
        ValueError: a field that does not exist or cannot change.
        pydantic.ValidationError: a value of the wrong type or range.
    """
    unknown = set(changes) - MUTABLE_FIELDS
    if unknown:
        names = ", ".join(sorted(unknown))
        hint = " (use transition() to change status)" if "status" in unknown else ""
        raise ValueError(
            f"cannot change {names}{hint}; changeable fields: {', '.join(sorted(MUTABLE_FIELDS))}"
        )
    if not changes:
        return {}
    model = _Changes.model_validate(changes)
    return {k: getattr(model, k) for k in changes}


def validate_list_args(limit: int, offset: int) -> None:
    """Reject a negative ``offset`` or a ``limit`` below 1.

    Raises:
        ValueError: either bound is out of range.
    """
    if not is_int(limit) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    if not is_int(offset) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")


def validate_output_args(since: int, limit: int | None) -> None:
    """Reject a ``since`` below 0 or a ``limit`` below 1 of `RunRegistry.get_output`.

    Raises:
        ValueError: either bound is out of range.
    """
    if since < 0:
        raise ValueError(f"since must be >= 0, got {since!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit!r}")


def check_keep_from_seq(keep_from_seq: int) -> None:
    """Reject a ``keep_from_seq`` of `OutputTrimming.trim_output` that is not an int >= 1.

    Raises:
        ValueError: it is not an int >= 1.
    """
    if not is_int(keep_from_seq) or keep_from_seq < 1:
        raise ValueError(f"keep_from_seq must be an int >= 1, got {keep_from_seq!r}")


def is_int(value: object) -> bool:
    """Whether ``value`` is an int and not a bool (callers may not be type-checked)."""
    return isinstance(value, int) and not isinstance(value, bool)


def validate_cleanup_args(
    older_than: timedelta, keep: int, statuses: StatusFilter
) -> tuple[int, frozenset[RunStatus]]:
    """Check the arguments of `RunRegistry.cleanup_old_runs`.

    Returns:
        The cutoff (runs that finished before it, in µs since the epoch, are old enough)
        and the finished statuses to delete (None stands for every finished status).

    Raises:
        TypeError: ``older_than`` is not a `timedelta`, or ``keep`` not an int.
        ValueError: ``older_than`` or ``keep`` is negative, or a status is unknown.
    """
    age: object = older_than  # callers may not be type-checked
    if not isinstance(age, timedelta):
        raise TypeError(
            f"older_than must be a datetime.timedelta such as timedelta(days=30), got {age!r}"
        )
    if age < timedelta(0):
        raise ValueError(
            f"older_than must not be negative (it would match every finished run), got "
            f"{age!r}: pass how long ago runs must have finished, e.g. timedelta(days=30)"
        )
    if not is_int(keep):
        raise TypeError(f"keep must be an int >= 0, got {keep!r}")
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep!r}")
    wanted = TERMINAL if statuses is None else normalize_statuses(statuses) or frozenset()
    return now_us() - age // timedelta(microseconds=1), wanted & TERMINAL


def validate_output(chunks: Iterable[object]) -> list[tuple[str, str]]:
    """Check the chunks given to `RunRegistry.append_output`.

    Returns:
        The chunks as ``(stream, text)`` pairs (an `OutputChunk` gives its own).

    Raises:
        TypeError: a chunk is neither a pair of strings nor an `OutputChunk`.
        ValueError: a stream name is empty or longer than 64 characters.
    """
    items: list[tuple[str, str]] = []
    for chunk in chunks:
        if isinstance(chunk, OutputChunk):
            chunk = (chunk.stream, chunk.text)  # noqa: PLW2901 - the pair it stands for
        if (
            not isinstance(chunk, tuple)
            or len(chunk) != 2
            or not isinstance(chunk[0], str)
            or not isinstance(chunk[1], str)
        ):
            raise TypeError(
                f"output chunks are (stream, text) pairs of str or OutputChunks, got {chunk!r}"
            )
        if not 1 <= len(chunk[0]) <= 64:
            raise ValueError(f"stream name must be 1 to 64 characters, got {chunk[0]!r}")
        items.append((chunk[0], chunk[1]))
    return items


@runtime_checkable
class ManagerPresence(Protocol):
    """**Protocol:** a registry where managers keep a row of their own (see `ManagerInfo`).

    With it, liveness costs one heartbeat write per manager per interval whatever the
    number of runs, and finding dead managers costs O(managers): their runs are found by
    owner and status (an index) and recorded in one compare-and-set per dead owner.
    Registries without it get the per-run heartbeat and the scan of RUNNING runs.
    """

    async def register_manager(self, info: ManagerInfo) -> None:
        """Insert or replace the row of ``info.owner``."""
        ...

    async def heartbeat_manager(self, owner: str, at: datetime, running: int) -> bool:
        """Set the manager's ``heartbeat_at`` and ``running``.

        Returns:
            False if its row is gone: it was declared dead (its runs were recorded
            interrupted) or unregistered. The manager must then stop its runs whose records
            ended, and register again.
        """
        ...

    async def unregister_manager(self, owner: str) -> None:
        """Remove the manager's row (a clean shutdown). Safe if it is absent."""
        ...

    async def list_managers(self) -> list[ManagerInfo]:
        """Every registered manager, by ``owner``; dead ones stay until a survivor sweeps them."""
        ...

    async def interrupt_dead_managers(self, now: datetime, by: str) -> list[InterruptedRun]:
        """Sweep the managers whose heartbeat is older than their own lease at ``now``.

        For each (but ``by`` itself), atomically and only if its heartbeat did not move
        meanwhile: remove its row, record its RUNNING runs FAILED and its QUEUED runs
        CANCELLED (``error_type="RunInterrupted"``). When several survivors race, each run
        is recorded by exactly one.

        Returns:
            The runs this call recorded.
        """
        ...

    async def cancelled_runs(self, owner: str, since: datetime) -> list[str]:
        """Ids of the runs of ``owner`` recorded CANCELLED with ``finished_at >= since``.

        How a manager learns of cancellations made by other processes: an indexed query
        by owner and status, not a read of every run it executes.
        """
        ...


async def sweep_dead_managers(
    registry: Any,
    now: datetime,
    by: str,
) -> list[InterruptedRun]:
    """`ManagerPresence.interrupt_dead_managers` from two backend primitives.

    ``registry.list_managers()`` finds the expired rows; ``registry._interrupt_owner(info,
    now, by)`` sweeps one of them, compare-and-set on the heartbeat that was read.
    """
    swept: list[InterruptedRun] = []
    for info in await registry.list_managers():
        if info.owner != by and info.expired(now):
            swept.extend(await registry._interrupt_owner(info, now, by))
    return swept
