"""How a manager's status writes reach its registry.

`DirectWriter` applies writes to an `InMemoryRunRegistry` synchronously, so they are visible
at once and cost a dict lookup. `QueueWriter` serves any other `RunRegistry`: writes are
queued and applied in order by one background task, so the run never waits for the registry;
a compare-and-set that did not apply is reported back to the manager.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from runtrack._clock import us_to_dt
from runtrack._exceptions import DuplicateRunError, RunNotFoundError
from runtrack._logging import get_logger
from runtrack._models import Run
from runtrack._status import PREDECESSORS, RunStatus
from runtrack.registry.base import StatusReading
from runtrack.registry.memory import InMemoryRunRegistry

if TYPE_CHECKING:
    from runtrack._admission import Job
    from runtrack.registry.base import RunRegistry

__all__ = [
    "DirectWriter",
    "QueueWriter",
    "Writer",
    "as_datetimes",
    "finish_changes",
    "job_to_run",
    "start_changes",
    "statuses_of",
]

_TIME_FIELDS = ("started_at", "finished_at", "heartbeat_at")


def job_to_run(job: Job, owner: str) -> Run:
    """The QUEUED record of a job, as a `Run`."""
    return Run(
        run_id=job.run_id,
        name=job.name,
        created_at=us_to_dt(job.created_at),
        parameters=job.parameters or {},
        tags=job.tags or {},
        group=job.group,
        priority=job.priority,
        timeout=job.timeout,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        owner=owner,
        task=job.task,
        args=job.args,
        idempotency_key=job.idempotency_key,
        requeued_from=job.requeued_from,
        requeue_on_interrupt=job.requeue_on_interrupt,
    )


class Writer(Protocol):
    """What the manager needs from a writer. Timestamps in ``changes`` are int µs."""

    def insert(self, job: Job) -> bool:
        """Record the job QUEUED unless its id exists; False if it certainly existed."""
        ...

    async def insert_now(self, job: Job) -> bool:
        """Record the job QUEUED before returning; False if the id existed."""
        ...

    def adopt(self, job: Job) -> None:
        """Take on a durable run this manager claimed (recorded RUNNING by the claim)."""
        ...

    def start(self, job: Job, started_us: int) -> bool:
        """QUEUED → RUNNING for the job's attempt; False if it certainly did not apply.

        A claimed job (`Job.claimed`) is RUNNING already: nothing is written for it.
        """
        ...

    async def started(self, job: Job) -> bool:
        """Whether the RUNNING write `start` queued for ``job`` applied, once it has landed.

        A durable run's retry waits for it before its code starts: of two managers that
        hold the same run (one swept meanwhile), only the one whose start applied runs it.
        """
        ...

    def finish(
        self,
        job: Job,
        status: RunStatus,
        finished_us: int,
        result: Any,
        error_type: str | None,
        error_message: str | None,
        dead: bool = False,
    ) -> bool | None:
        """RUNNING → a terminal status: whether it applied, or None if the answer comes later.

        ``dead`` records a durable run's final failure as a dead letter, in the same write.

        A writer that answers later calls the manager's ``on_finished(job, applied)``.
        """
        ...

    def cas(self, job: Job, to: RunStatus, changes: dict[str, Any]) -> bool:
        """Move the run to ``to`` from its legal predecessors; False if it certainly failed."""
        ...

    async def cas_now(self, job: Job, to: RunStatus, changes: dict[str, Any]) -> bool:
        """Like `cas`, applied before returning, with the true outcome."""
        ...

    def update(self, run_id: str, changes: dict[str, Any]) -> None:
        """Set non-status fields."""
        ...

    async def recorded(self, job: Job) -> None:
        """Return once the job's run is in the registry (before writing its output)."""
        ...

    async def status_of(self, run_ids: list[str]) -> dict[str, RunStatus]:
        """Current statuses of these runs (missing ones left out)."""
        ...

    async def existing_status(self, job: Job) -> RunStatus | None:
        """Wait for the job's insert: None if it created the record, else the stored status.

        Raises:
            Exception: the registry refused the record (its content), as it raised it.
        """
        ...

    async def settled(self, run_id: str) -> None:
        """Return once every write of this run made so far is applied."""
        ...

    def unreachable(self) -> BaseException | None:
        """The error of the last write sent, if it failed (an outage, for now), else None."""
        ...

    async def flush(self) -> None:
        """Return once every write made so far is applied."""
        ...

    async def aclose(self, timeout: float | None = None) -> list[tuple[str, str | None]]:
        """Flush for at most ``timeout`` seconds and stop.

        Returns:
            The runs whose writes could not be applied, each with the status it was to be
            recorded with (None for field updates); logged once as ``registry_writes_lost``.
        """
        ...


class DirectWriter:
    """Synchronous writes into an `InMemoryRunRegistry` (the manager's fast path).

    A durable run's writes apply only while this manager owns its record (see
    `RunWrite.owner`): swept and claimed by another manager, the run is no longer ours.
    """

    __slots__ = ("_owner", "_registry", "_runs")

    def __init__(self, registry: InMemoryRunRegistry, owner: str) -> None:
        self._registry = registry
        self._runs = registry._runs
        self._owner = owner

    def insert(self, job: Job) -> bool:
        job.owner = self._owner
        if self._registry._insert(job):
            job.rec = job
            return True
        rec = self._runs[job.run_id]
        if rec.status is not RunStatus.QUEUED:  # running or ended: it must not run again
            raise DuplicateRunError(job.run_id)
        job.rec = rec  # recorded QUEUED before start_task: run that record
        return False

    async def insert_now(self, job: Job) -> bool:
        return self.insert(job)

    def adopt(self, job: Job) -> None:
        job.owner = self._owner
        job.rec = self._runs.get(job.run_id)

    def start(self, job: Job, started_us: int) -> bool:
        rec = job.rec
        if job.claimed:  # its claim recorded it RUNNING, unless a cancel came first
            job.claimed = False
            return rec is not None and rec.status is RunStatus.RUNNING and rec.owner == self._owner
        if rec is None or rec.status is not RunStatus.QUEUED:
            return False
        if job.task is not None and rec.owner != self._owner:
            return False  # a durable run's retry, taken from this manager
        rec.status = RunStatus.RUNNING
        rec.started_at = rec.heartbeat_at = started_us
        rec.owner = self._owner
        if job.attempt != 1:
            rec.attempt = job.attempt
            rec.error_type = rec.error_message = None
        return True

    def finish(
        self,
        job: Job,
        status: RunStatus,
        finished_us: int,
        result: Any,
        error_type: str | None,
        error_message: str | None,
        dead: bool = False,
    ) -> bool:
        rec = job.rec
        if rec is None or rec.status is not RunStatus.RUNNING:
            return False
        if job.task is not None and rec.owner != self._owner:
            return False
        rec.status = status
        rec.finished_at = finished_us
        rec.result = result
        rec.error_type = error_type
        rec.error_message = error_message
        if dead:
            rec.dead = True
        return True

    def cas(self, job: Job, to: RunStatus, changes: dict[str, Any]) -> bool:
        owner = self._owner if job.task is not None else None
        return self._registry._cas(job.run_id, to, PREDECESSORS[to], changes, owner) is not None

    async def cas_now(self, job: Job, to: RunStatus, changes: dict[str, Any]) -> bool:
        return self.cas(job, to, changes)

    async def started(self, job: Job) -> bool:
        return True  # `start` already applied it, in this process

    def update(self, run_id: str, changes: dict[str, Any]) -> None:
        self._registry._update(run_id, changes)

    async def recorded(self, job: Job) -> None:
        return None

    async def status_of(self, run_ids: list[str]) -> dict[str, RunStatus]:
        runs = self._registry._runs
        return {rid: runs[rid].status for rid in run_ids if rid in runs}

    async def existing_status(self, job: Job) -> RunStatus | None:
        rec = job.rec
        return None if rec is None or rec is job else rec.status

    async def settled(self, run_id: str) -> None:
        return None

    def unreachable(self) -> BaseException | None:
        return None

    async def flush(self) -> None:
        return None

    async def aclose(self, timeout: float | None = None) -> list[tuple[str, str | None]]:
        return []


def as_datetimes(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` with integer-microsecond timestamps turned into datetimes."""
    out = dict(changes)
    for field in _TIME_FIELDS:
        value = out.get(field)
        if isinstance(value, int):
            out[field] = us_to_dt(value)
    return out


def start_changes(job: Job, owner: str, started_us: int) -> dict[str, Any]:
    """The fields a QUEUED → RUNNING write sets (a retry's attempt clears the last error)."""
    changes: dict[str, Any] = {
        "started_at": started_us,
        "heartbeat_at": started_us,
        "owner": owner,
        "attempt": job.attempt,
    }
    if job.attempt > 1:
        changes["error_type"] = changes["error_message"] = None
    return changes


def finish_changes(
    finished_us: int,
    result: Any,
    error_type: str | None,
    error_message: str | None,
    *,
    dead: bool = False,
) -> dict[str, Any]:
    """The fields a RUNNING → terminal write sets (``dead``: a durable run's final failure)."""
    changes = {
        "finished_at": finished_us,
        "result": result,
        "error_type": error_type,
        "error_message": error_message,
    }
    if dead:
        changes["dead"] = True
    return changes


async def statuses_of(registry: RunRegistry, run_ids: list[str]) -> dict[str, RunStatus]:
    """Current statuses of these runs (missing ones left out).

    In one read where the registry offers it (`StatusReading`), else one run at a time.
    """
    if isinstance(registry, StatusReading):
        return await registry.get_statuses(run_ids)
    out: dict[str, RunStatus] = {}
    for run_id in run_ids:
        run = await registry.get_run(run_id)
        if run is not None:
            out[run_id] = run.status
    return out


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen: its caller may have stopped waiting."""
    if not future.cancelled():
        future.exception()


class QueueWriter:
    """Writes to any `RunRegistry`, queued and applied in order by one background task."""

    def __init__(
        self,
        registry: RunRegistry,
        owner: str,
        on_conflict: Callable[[str], None],
        on_finished: Callable[[Job, bool], None],
    ) -> None:
        self._registry = registry
        self._owner = owner
        self._on_conflict = on_conflict
        self._on_finished = on_finished
        # (run id, the status the write records or None, the write)
        self._ops: deque[tuple[str, str | None, Callable[[], Coroutine[Any, Any, Any]]]] = deque()
        self._current: tuple[str, str | None] | None = None
        self._failing: BaseException | None = None
        self._inserts: dict[str, asyncio.Future[bool]] = {}
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._log = get_logger(owner=owner)

    def _put(
        self, run_id: str, op: Callable[[], Coroutine[Any, Any, Any]], status: str | None = None
    ) -> None:
        self._ops.append((run_id, status, op))
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._ops:
            run_id, status, op = self._ops.popleft()
            self._current = (run_id, status)
            try:
                await op()
            except Exception as exc:  # a failed write must not stop the ones behind it
                self._failing = exc
                self._log.error("registry_write_failed", run_id=run_id, exc_info=exc)
            else:
                self._failing = None
            self._current = None
        self._idle.set()

    def adopt(self, job: Job) -> None:
        job.owner = self._owner

    def insert(self, job: Job) -> bool:
        run = job_to_run(job, self._owner)
        outcome = self._inserts[job.run_id] = asyncio.get_running_loop().create_future()

        async def op() -> None:
            # start_task records the run only if it is not already there
            try:
                await self._registry.add_run(run)
            except DuplicateRunError:
                outcome.set_result(False)
            except Exception as exc:
                job.refusal = exc
                outcome.set_result(False)
                raise
            else:
                outcome.set_result(True)

        self._put(job.run_id, op, RunStatus.QUEUED.value)
        return True

    async def existing_status(self, job: Job) -> RunStatus | None:
        outcome = self._inserts.pop(job.run_id, None)
        if outcome is not None and await outcome:
            return None
        if job.refusal is not None:
            raise job.refusal
        run = await self._registry.get_run(job.run_id)
        return RunStatus.CANCELLED if run is None else run.status

    async def insert_now(self, job: Job) -> bool:
        await self.flush()
        try:
            await self._registry.add_run(job_to_run(job, self._owner))
        except DuplicateRunError:
            return False
        return True

    def cas(self, job: Job, to: RunStatus, changes: dict[str, Any]) -> bool:
        self._queue_cas(job, to, changes, None)
        return True

    def _queue_cas(
        self,
        job: Job,
        to: RunStatus,
        changes: dict[str, Any],
        outcome: asyncio.Future[bool] | None,
    ) -> None:
        """Queue a compare-and-set; its outcome goes to ``outcome``, else a miss to on_conflict."""
        run_id = job.run_id
        values = as_datetimes(changes)
        self._inserts.pop(run_id, None)  # nobody asks once the run moves on

        async def op() -> None:
            try:
                applied = await self._registry.transition(run_id, to, **values) is not None
            except Exception as exc:
                if outcome is not None:
                    outcome.set_exception(exc)
                raise
            if outcome is not None:
                outcome.set_result(applied)
            elif not applied:
                self._on_conflict(run_id)

        self._put(run_id, op, to.value)

    def start(self, job: Job, started_us: int) -> bool:
        if job.claimed:  # its claim recorded it RUNNING
            job.claimed = False
            return True
        return self.cas(job, RunStatus.RUNNING, start_changes(job, self._owner, started_us))

    async def started(self, job: Job) -> bool:
        # One write at a time through a plain RunRegistry: its start is not confirmed
        # (durable runs need a claiming registry, which writes in batches or directly).
        return True

    def finish(
        self,
        job: Job,
        status: RunStatus,
        finished_us: int,
        result: Any,
        error_type: str | None,
        error_message: str | None,
        dead: bool = False,
    ) -> bool | None:
        changes = as_datetimes(
            finish_changes(finished_us, result, error_type, error_message, dead=dead)
        )

        async def op() -> None:
            applied = False
            try:
                applied = await self._registry.transition(job.run_id, status, **changes) is not None
            finally:
                self._on_finished(job, applied)

        self._put(job.run_id, op, status.value)
        return None

    async def cas_now(self, job: Job, to: RunStatus, changes: dict[str, Any]) -> bool:
        # Queued like every other write, so a caller that stops waiting does not undo it.
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        outcome.add_done_callback(_retrieved)
        self._queue_cas(job, to, changes, outcome)
        return await asyncio.shield(outcome)

    def update(self, run_id: str, changes: dict[str, Any]) -> None:
        values = as_datetimes(changes)

        async def op() -> None:
            # cleaned up or never recorded: nothing to update
            with contextlib.suppress(RunNotFoundError):
                await self._registry.update_run(run_id, **values)

        self._put(run_id, op)

    async def recorded(self, job: Job) -> None:
        await self.flush()

    async def status_of(self, run_ids: list[str]) -> dict[str, RunStatus]:
        return await statuses_of(self._registry, run_ids)

    async def settled(self, run_id: str) -> None:
        await self.flush()

    def unreachable(self) -> BaseException | None:
        return self._failing

    async def flush(self) -> None:
        await self._idle.wait()

    async def aclose(self, timeout: float | None = None) -> list[tuple[str, str | None]]:
        try:
            async with asyncio.timeout(timeout):
                await self.flush()
        except TimeoutError:
            pass
        lost: dict[str, str | None] = {}
        current = [self._current] if self._current is not None else []
        for run_id, status in [*current, *((r, st) for r, st, _ in self._ops)]:
            if status is not None or run_id not in lost:
                lost[run_id] = status
        if lost:
            self._log.error(
                "registry_writes_lost",
                runs=[{"run_id": run_id, "status": status} for run_id, status in lost.items()],
                count=len(lost),
                detail="the registry stayed unreachable at shutdown; these runs' last writes "
                "are lost (status: the one they were to be recorded with)",
            )
        if self._task is not None:
            self._task.cancel()
        self._ops.clear()
        return list(lost.items())
