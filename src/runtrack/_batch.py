"""`BatchWriter`: group-committed registry writes for SQL and Redis registries.

A run's lifecycle costs several writes (QUEUED, RUNNING, a terminal status, progress,
heartbeats). Written one round trip at a time, the registry would cap throughput, so writes
wait in a per-run pending entry and a background task sends what is pending as one
`BatchWriting.write_batch` call: one transaction or one server-side script. Where the
registry allows it (``batches_in_flight``), two batches are in flight at once (the next is
prepared while the registry applies one), never with the same run in both, so each run's
writes land in order. Under load batches grow instead of
queueing round trips. A run whose QUEUED, RUNNING and COMPLETED writes fall in one window is
written once, with its final state.

When the registry is unreachable the batch is retried with backoff and merged, oldest first,
with what was written meanwhile; runs keep executing. Outcomes the manager depends on (a
terminal write, a compare-and-set that did not apply) are reported back when known.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from runtrack._batch_entry import Entry
from runtrack._clock import now_us, us_to_dt
from runtrack._exceptions import RegistryConfigError, RegistryUnavailableError
from runtrack._logging import get_logger
from runtrack._status import PREDECESSORS, RunStatus
from runtrack._storable import MAX_ERROR_MESSAGE, ResultNotStorable, storable_text
from runtrack._writer import finish_changes, start_changes, statuses_of
from runtrack.registry.base import RUN_FIELDS, RunWrite

if TYPE_CHECKING:
    from runtrack._admission import Job
    from runtrack.registry.base import BatchWriting, RunRegistry

__all__ = ["BatchWriter"]

#: Most writes sent in one batch (SQL parameter limits, Redis script argument size).
MAX_BATCH: Final = 500
#: Backoff between retries while the registry is unreachable, in seconds.
RETRY_FIRST: Final = 0.05
RETRY_MAX: Final = 2.0
# A registry that refuses its configuration (a wrong password, a missing database) is as
# unusable as an unreachable one: the writes wait for it to be fixed, and whoever waits for
# a write is told at once (see `_retry_later`).
_TRANSIENT: Final = (
    RegistryUnavailableError,
    RegistryConfigError,
    ConnectionError,
    TimeoutError,
    OSError,
)


_job_fields = operator.attrgetter(*RUN_FIELDS)


def _job_record(job: Job) -> dict[str, Any]:
    """The job's record fields (kept current by this writer) in stored form, to insert."""
    return dict(zip(RUN_FIELDS, _job_fields(job), strict=True))


class BatchWriter:
    """Coalescing, group-committed writes to a `BatchWriting` registry."""

    def __init__(
        self,
        registry: RunRegistry,
        owner: str,
        on_conflict: Callable[[str], None],
        on_finished: Callable[[Job, bool], None],
        *,
        backend: str,
        submit_timeout: float = 10.0,
        close_timeout: float = 30.0,
    ) -> None:
        self._registry = registry
        self._batch: BatchWriting = registry  # type: ignore[assignment]
        self._owner = owner
        self._on_conflict = on_conflict
        self._on_finished = on_finished
        self._backend = backend
        self._submit_timeout = submit_timeout
        self._close_timeout = close_timeout
        self._pending: dict[str, Entry] = {}
        self._task: asyncio.Task[None] | None = None
        self._senders: set[asyncio.Task[None]] = set()
        self._flying: dict[str, Entry] = {}  # runs in a batch in flight
        self._delay = RETRY_FIRST
        self._backing_off = False
        self._in_flight = max(1, int(getattr(registry, "batches_in_flight", 1)))
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._outage_since: float | None = None
        self._poked = asyncio.Event()
        self._outage_error: BaseException | None = None
        self._log = get_logger(owner=owner, backend=backend)

    # -- recording writes --------------------------------------------------------------

    def _entry(self, run_id: str, job: Job | None) -> Entry:
        entry = self._pending.get(run_id)
        if entry is None:
            entry = self._pending[run_id] = Entry(job)
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._run())
            self._idle.clear()
            self._wake.set()
        elif entry.job is None:
            entry.job = job
        return entry

    def insert(self, job: Job) -> bool:
        job.owner = self._owner
        self._entry(job.run_id, job).insert = True
        return True

    def adopt(self, job: Job) -> None:
        job.owner = self._owner

    async def insert_now(self, job: Job) -> bool:
        job.owner = self._owner
        entry = self._entry(job.run_id, job)
        entry.insert = True
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry.wait_with(done)
        try:
            async with asyncio.timeout(self._submit_timeout):
                inserted = await asyncio.shield(done)
        except TimeoutError:
            self._abandon(job)
            raise RegistryUnavailableError(
                self._backend, f"the run was not recorded within {self._submit_timeout:g}s"
            ) from None
        if not inserted and job.refusal is not None:
            self._abandon(job)
            raise job.refusal
        return inserted

    def _abandon(self, job: Job) -> None:
        """Its submit gave up: the run will not execute, so it must end CANCELLED.

        The QUEUED insert may be pending, or in a batch in flight whose fate is unknown;
        either way a compare-and-set to CANCELLED follows it (or merges into it), so the
        registry never keeps a QUEUED run that nobody will execute.
        """
        self.cas(
            job,
            RunStatus.CANCELLED,
            {
                "finished_at": now_us(),
                "error_type": "RegistryUnavailableError",
                "error_message": "not started: the registry was unreachable when it was submitted",
            },
        )

    def start(self, job: Job, started_us: int) -> bool:
        if job.claimed:  # its claim recorded it RUNNING
            job.claimed = False
            return True
        job.status = RunStatus.RUNNING
        job.started_at = job.heartbeat_at = started_us
        job.owner = self._owner
        if job.attempt > 1:
            job.error_type = job.error_message = None
        changes = start_changes(job, self._owner, started_us)
        self._entry(job.run_id, job).cas(
            RunStatus.RUNNING, PREDECESSORS[RunStatus.RUNNING], changes
        )
        return True

    async def started(self, job: Job) -> bool:
        """Whether the QUEUED → RUNNING write `start` just queued for ``job`` applied.

        Sends it now. A refused start is the caller's to handle: the manager is not told
        of it as a conflict (another manager may have taken the run over).
        """
        entry = self._pending.get(job.run_id)
        if entry is None:
            return True
        entry.confirming = True
        done = asyncio.get_running_loop().create_future()
        entry.wait_with(done)
        self._poke()
        return bool(await asyncio.shield(done))

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
        job.status = status
        job.finished_at = finished_us
        job.result = result
        job.error_type = error_type
        job.error_message = error_message
        if dead:
            job.dead = True
        entry = self._entry(job.run_id, job)
        entry.cas(
            status,
            PREDECESSORS[status],
            finish_changes(finished_us, result, error_type, error_message, dead=dead),
        )
        entry.finishing = True
        return None

    def cas(self, job: Job, to: RunStatus, changes: dict[str, Any]) -> bool:
        job.status = to
        for field, value in changes.items():
            setattr(job, field, value)
        self._entry(job.run_id, job).cas(to, PREDECESSORS[to], changes)
        return True

    async def cas_now(self, job: Job, to: RunStatus, changes: dict[str, Any]) -> bool:
        self.cas(job, to, changes)
        self._poke()
        entry = self._pending[job.run_id]
        done = asyncio.get_running_loop().create_future()
        entry.wait_with(done)
        return await asyncio.shield(done)

    def update(self, run_id: str, changes: dict[str, Any]) -> None:
        self._entry(run_id, None).changes.update(changes)

    async def recorded(self, job: Job) -> None:
        run_id = job.run_id
        for entry in (self._flying.get(run_id), self._pending.get(run_id)):
            if entry is not None and entry.insert:
                done = asyncio.get_running_loop().create_future()
                entry.wait_with(done)
                await asyncio.shield(done)
                return

    async def status_of(self, run_ids: list[str]) -> dict[str, RunStatus]:
        return await statuses_of(self._registry, run_ids)

    async def existing_status(self, job: Job) -> RunStatus | None:
        run_id = job.run_id
        entry = self._pending.get(run_id) or self._flying.get(run_id)
        if entry is not None:
            done = asyncio.get_running_loop().create_future()
            entry.wait_with(done)
            if await asyncio.shield(done):
                return None
        if job.refusal is not None:
            raise job.refusal
        delay = RETRY_FIRST
        while True:
            try:
                statuses = await statuses_of(self._registry, [run_id])
            except _TRANSIENT:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            return statuses.get(run_id, RunStatus.CANCELLED)

    def unreachable(self) -> BaseException | None:
        return self._outage_error if self._outage_since is not None else None

    def _poke(self) -> None:
        """Someone waits for writes: retry now rather than at the end of the backoff."""
        self._poked.set()

    async def settled(self, run_id: str) -> None:
        self._poke()
        # Both at once: a failed batch merges the pending entry into the one in flight.
        waiting: list[asyncio.Future[bool]] = []
        for entry in (self._flying.get(run_id), self._pending.get(run_id)):
            if entry is not None:
                done = asyncio.get_running_loop().create_future()
                entry.wait_with(done)
                waiting.append(done)
        for done in waiting:
            await asyncio.shield(done)

    async def flush(self) -> None:
        if not self._idle.is_set():
            self._poke()
        await self._idle.wait()

    async def aclose(self, timeout: float | None = None) -> list[tuple[str, str | None]]:
        try:
            async with asyncio.timeout(self._close_timeout if timeout is None else timeout):
                await self.flush()
        except TimeoutError:
            pass
        lost = self.unwritten()
        if lost:
            self._log.error(
                "registry_writes_lost",
                runs=[{"run_id": run_id, "status": status} for run_id, status in lost],
                count=len(lost),
                detail=f"the {self._backend} registry stayed unreachable at shutdown; these "
                "runs' last writes are lost (status: the one they were to be recorded with)",
            )
        if self._task is not None:
            self._task.cancel()
        for sender in list(self._senders):
            sender.cancel()
        return lost

    def unwritten(self) -> list[tuple[str, str | None]]:
        """The runs with writes not applied yet, and the status each was to be recorded with."""
        out: dict[str, str | None] = {}
        for entries in (self._flying, self._pending):
            for run_id, entry in entries.items():
                status = entry.to.value if entry.to is not None else None
                if status is None and entry.insert:
                    status = RunStatus.QUEUED.value
                if status is not None or run_id not in out:
                    out[run_id] = status
        return list(out.items())

    # -- sending batches ------------------------------------------------------------------

    async def _run(self) -> None:
        """Hand batches to senders, at most the registry's ``batches_in_flight`` at a time."""
        loop = asyncio.get_running_loop()
        while True:
            if self._pending and len(self._senders) < self._in_flight and not self._backing_off:
                # One loop turn lets writes made in this iteration join the batch.
                await asyncio.sleep(0)
                batch = self._take()
                if batch is not None:
                    sender = loop.create_task(self._send(*batch))
                    self._senders.add(sender)
                    continue
            if not self._pending and not self._senders:
                self._idle.set()
            self._wake.clear()
            await self._wake.wait()

    def _take(self) -> tuple[list[str], list[Entry], list[RunWrite]] | None:
        """Up to `MAX_BATCH` pending runs, none of them in a batch still in flight.

        A run is in one batch at a time, so its writes land in the order they were made.
        The writes are built here, at once: an insert carries the job's fields as they are
        now, which later writes (made while this batch waits to be sent) must not overtake.
        """
        run_ids: list[str] = []
        for run_id in self._pending:
            if run_id not in self._flying:
                run_ids.append(run_id)
                if len(run_ids) == MAX_BATCH:
                    break
        if not run_ids:
            return None
        entries = [self._pending.pop(run_id) for run_id in run_ids]
        self._flying.update(zip(run_ids, entries, strict=True))
        writes = [self._to_write(run_id, e) for run_id, e in zip(run_ids, entries, strict=True)]
        return run_ids, entries, writes

    async def _send(self, run_ids: list[str], entries: list[Entry], writes: list[RunWrite]) -> None:
        try:
            try:
                try:
                    applied = await self._batch.write_batch(writes)
                except _TRANSIENT:
                    raise
                except Exception as exc:
                    applied = await self._one_by_one(writes, entries, exc)
            except _TRANSIENT as exc:
                await self._retry_later(run_ids, entries, exc)
                return
            self._outage_error = None
            if self._outage_since is not None:
                self._log.warning(
                    "registry_available_again",
                    outage=round(time.monotonic() - self._outage_since, 3),
                )
                self._outage_since = None
            self._delay = RETRY_FIRST
            for run_id, entry, ok in zip(run_ids, entries, applied, strict=True):
                landed = ok or (entry.lost and await self._landed_before(run_id, entry))
                self._report(entry, landed)
        finally:
            for run_id in run_ids:
                del self._flying[run_id]
            self._senders.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]
            self._wake.set()

    async def _retry_later(
        self, run_ids: list[str], entries: list[Entry], exc: BaseException
    ) -> None:
        """The registry is unreachable: requeue the batch and hold every sender back."""
        for entry in entries:
            entry.sent_without_answer()
            if isinstance(exc, RegistryConfigError) and entry.insert and entry.job is not None:
                entry.job.refusal = exc  # its submit raises this at once (see insert_now)
                for fut in entry.waiters or ():
                    if not fut.done():
                        fut.set_result(False)
        self._outage_error = exc
        self._requeue(run_ids, entries)
        self._note_outage(exc)
        self._backing_off = True
        self._poked.clear()
        try:
            # A caller waiting for these writes cuts the backoff short (see `_poke`).
            async with asyncio.timeout(self._delay):
                await self._poked.wait()
        except TimeoutError:
            pass
        finally:
            self._backing_off = False
        self._delay = min(self._delay * 2, RETRY_MAX)

    def _to_write(self, run_id: str, entry: Entry) -> RunWrite:
        job = entry.job
        stored = None
        if entry.insert and job is not None:
            stored = _job_record(job)
        # A durable run's compare-and-set applies only while this manager owns the run: if
        # it was swept (its heartbeat ran late) and the run claimed by another manager, its
        # writes must not overwrite the new owner's (see `RunWrite.owner`).
        durable = job is not None and job.task is not None
        owner = self._owner if entry.to is not None and durable else None
        return RunWrite(
            run_id,
            to=entry.to,
            expect=entry.expect,
            changes=entry.changes,
            stored=stored,
            owner=owner,
        )

    async def _landed_before(self, run_id: str, entry: Entry) -> bool:
        """Whether a write that did not apply now had in fact landed on an earlier try."""
        try:
            run = await self._registry.get_run(run_id)
        except _TRANSIENT:
            return False
        if run is None:
            return False
        if entry.to is None:
            # An insert alone: it landed if the stored run is the one we sent.
            job = entry.job
            return (
                entry.insert
                and job is not None
                and run.owner == self._owner
                and run.created_at == us_to_dt(job.created_at)
            )
        if run.status is not entry.to:
            return False
        if entry.job is not None and entry.job.task is not None and run.owner != self._owner:
            return False  # a durable run another manager holds now (see `_to_write`)
        finished = entry.changes.get("finished_at")
        if entry.to.is_terminal and finished is not None:
            # Ours, not another writer's: the very finish time we sent.
            return run.finished_at == us_to_dt(finished) if isinstance(finished, int) else True
        return True

    def _requeue(self, run_ids: list[str], entries: list[Entry]) -> None:
        """Put a failed batch back in front of what was written meanwhile."""
        newer = self._pending
        self._pending = {}
        for run_id, entry in zip(run_ids, entries, strict=True):
            self._pending[run_id] = entry
        for run_id, entry in newer.items():
            old = self._pending.get(run_id)
            if old is None:
                self._pending[run_id] = entry
            else:
                old.absorb(entry)

    def _note_outage(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._log.warning(
                "registry_unavailable",
                error=str(exc),
                pending=len(self._pending),
                detail="runs keep executing; their writes are retried until it is back",
            )

    async def _one_by_one(
        self, writes: Sequence[RunWrite], entries: Sequence[Entry], exc: Exception
    ) -> list[bool]:
        """A batch failed for a reason other than an outage: find and settle the bad write.

        A write the registry refuses (its content: a value the store cannot hold) is that
        run's problem: a terminal write is replaced by FAILED with
        ``error_type="ResultNotStorable"``; a refused insert is reported to whoever waits
        for it; anything else is dropped with an error log. An outage met on the way is
        raised: the whole batch is then retried later (the writes already applied one by
        one are recognised as such, see `_landed_before`).
        """
        self._log.error("registry_batch_failed", writes=len(writes), error=repr(exc))
        applied: list[bool] = []
        for write, entry in zip(writes, entries, strict=True):
            try:
                applied.extend(await self._batch.write_batch([write]))
            except _TRANSIENT:
                raise
            except Exception as single:  # whatever it is, the other writes must still land
                applied.append(await self._refused(write, entry, single))
        return applied

    async def _refused(self, write: RunWrite, entry: Entry, exc: Exception) -> bool:
        """Settle one write the registry refused; whether a replacement write applied."""
        job = entry.job
        if job is not None and entry.insert:
            job.refusal = exc
        if job is None or write.to is None or not write.to.is_terminal:
            self._log.error(
                "registry_write_dropped", run_id=write.run_id, error=repr(exc), exc_info=exc
            )
            return False
        message = storable_text(
            f"the run ended {write.to.value}, but the {self._backend} registry refused to "
            f"store its record: {exc}",
            MAX_ERROR_MESSAGE,
        )
        self._log.error(
            "run_result_not_storable", run_id=write.run_id, name=job.name,
            status=write.to.value, error=repr(exc),
        )  # fmt: skip
        job.status = RunStatus.FAILED
        job.result = None
        job.error_type = ResultNotStorable.__name__
        job.error_message = message
        if entry.finishing:
            _, duration, _ = job.outcome
            job.outcome = (RunStatus.FAILED, duration, ResultNotStorable(message))
        changes = {
            **entry.changes,
            "result": None,
            "error_type": job.error_type,
            "error_message": message,
        }
        entry.to = RunStatus.FAILED
        entry.changes = changes
        try:
            (ok,) = await self._batch.write_batch([self._to_write(write.run_id, entry)])
        except _TRANSIENT:
            raise
        except Exception as again:
            self._log.error("registry_write_dropped", run_id=write.run_id, exc_info=again)
            return False
        return ok

    def _report(self, entry: Entry, applied: bool) -> None:
        for fut in entry.waiters or ():
            if not fut.done():
                fut.set_result(applied)
        job = entry.job
        if entry.finishing and job is not None:
            self._on_finished(job, applied)
        elif not applied and entry.to is not None and job is not None and not entry.confirming:
            self._on_conflict(job.run_id)
