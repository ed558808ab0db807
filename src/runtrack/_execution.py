"""How admitted runs execute: the executor loop and the recording of each run's end.

`Execution` is a mixin of `BackgroundTaskManager`, kept apart so the manager's module holds
its public API (submitting, cancelling, waiting, lifecycle) and this one the hot path every
run goes through: admission from the lanes, the QUEUED → RUNNING write, awaiting the code
under its timeout, and the terminal write, stats, listeners and waiters.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Mapping
from contextvars import copy_context
from time import time_ns
from typing import Any, Final

from pydantic import JsonValue, TypeAdapter, ValidationError

from runtrack._admission import DONE, FINISHING, QUEUED, RUNNING, Job, describe_error
from runtrack._claims import ClaimLoop
from runtrack._clock import now_us
from runtrack._context import _current
from runtrack._exceptions import CommandFailed
from runtrack._state import ManagerCore
from runtrack._status import RunStatus
from runtrack._storable import (
    ResultNotStorable,
    json_problem,
    text_problem,
)
from runtrack._writer import DirectWriter, Writer

__all__ = ["Execution", "close_coro"]

_JSON: TypeAdapter[Any] = TypeAdapter(JsonValue)
# Results recorded without a JSON check (floats are checked: NaN and infinities are not JSON).
_PLAIN_SMALL: Final = frozenset({int, bool})
_RUNNING_STATUS: Final = RunStatus.RUNNING
_COMPLETED: Final = RunStatus.COMPLETED


def close_coro(coro: object) -> None:
    """Close a coroutine that will never run (no "never awaited" warning)."""
    if inspect.iscoroutine(coro):
        coro.close()


class Execution(ManagerCore):
    """The executor loop and end-of-run bookkeeping, mixed into `BackgroundTaskManager`."""

    _claims: ClaimLoop

    async def _executor(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        lanes = self._lanes
        writer = self._writer
        direct = isinstance(writer, DirectWriter)
        held = self._heartbeat.held
        self._starting -= 1
        try:
            while self._executors <= self._limit:
                if held():  # paused past the lease? The heartbeat resumes admission.
                    return
                if len(copy_context()):
                    # The last run left context variables behind (it set some and did not
                    # reset them): the next run must not see them. A fresh executor takes
                    # over, with an empty context.
                    self._wake_pump()
                    return
                job = lanes.pop()
                if job is None:
                    return
                self._waiting -= 1
                claimed = job.claimed
                if not writer.start(job, time_ns() // 1000):
                    self._not_started(job)
                    continue
                coro = job.coro
                if coro is None:
                    coro = self._make_coro(job)
                    if job.task is not None and not direct and not claimed:
                        coro = _once_started(writer, job, coro)
                job.coro = None
                job.state = RUNNING
                job.aio_task = task
                job.started = time.monotonic()
                self._running += 1
                if self._listeners:
                    self._events.emit(job, RunStatus.RUNNING, RunStatus.QUEUED)
                if self._debug:
                    self._log.debug(
                        "run_started", run_id=job.run_id, name=job.name, status="running",
                        attempt=job.attempt,
                    )  # fmt: skip
                # The caller's context variables, as asyncio.create_task would give them.
                context = job.context
                entered = [var.set(value) for var, value in context.items()] if context else ()
                token = _current.set((self, job))  # type: ignore[arg-type]  # self is the manager
                try:
                    try:
                        if job.timeout is None:
                            result = await coro
                        else:
                            async with asyncio.timeout(job.timeout):
                                result = await coro
                    finally:
                        _current.reset(token)
                        for entry in reversed(entered):
                            entry.var.reset(entry)
                except _TakenOver:
                    self._running -= 1
                    self._log.warning(
                        "claimed_run_taken_over", run_id=job.run_id, name=job.name,
                        detail="its start did not apply: the run was released while this "
                        "manager was taken for dead, and another manager started it",
                    )  # fmt: skip
                    self._not_started(job)
                    continue
                except asyncio.CancelledError:
                    if not job.cancel_requested:
                        # The executor itself is being cancelled (event loop teardown):
                        # record the run CANCELLED, then let the cancellation through.
                        self._settle(job, RunStatus.CANCELLED, None, None)
                        raise
                    task.uncancel()
                    self._settle(job, RunStatus.CANCELLED, None, None)
                    continue
                except (KeyboardInterrupt, SystemExit) as exc:
                    self._settle(job, RunStatus.FAILED, None, exc)
                    raise
                except BaseException as exc:  # every failure is recorded here, none escapes
                    if job.cancel_requested:
                        task.uncancel()
                        self._settle(job, RunStatus.CANCELLED, None, None)
                    elif job.retry is not None and job.retry.should_retry(exc, job.attempt):
                        self._requeue(job, exc)
                    else:
                        self._settle(job, RunStatus.FAILED, None, exc)
                    continue
                if job.cancel_requested:
                    task.uncancel()
                    self._log.warning(
                        "run_ignored_cancellation",
                        run_id=job.run_id,
                        name=job.name,
                        detail="the coroutine caught CancelledError and returned; it is "
                        "recorded CANCELLED. Re-raise CancelledError after cleaning up.",
                    )
                    self._settle(job, RunStatus.CANCELLED, None, None)
                elif (
                    direct
                    and (result is None or type(result) in _PLAIN_SMALL)
                    and job.group is None
                    and not job.waiters
                    and not self._listeners
                    and not self._debug
                ):
                    self._completed_direct(job, result)
                else:
                    self._settle(job, RunStatus.COMPLETED, result, None)
        finally:
            self._executors -= 1

    def _wake_pump(self) -> None:
        """Have `_pump` start executors for waiting runs at the next loop iteration."""
        if self._waiting and not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _completed_direct(self, job: Job, result: Any) -> None:
        """`_settle` for the common case, flattened: a plain result on the memory registry.

        What `_settle`, `DirectWriter.finish`, `_ended` and `_finish_local` do for a run
        with no group, listener, waiter or debug logging, in one call instead of five: this
        runs once per run.
        """
        self._running -= 1
        duration = time.monotonic() - job.started
        rec = job.rec
        if rec is not None and rec.status is _RUNNING_STATUS:
            rec.status = _COMPLETED
            rec.finished_at = time_ns() // 1000
            rec.result = result
            status = _COMPLETED
        else:
            status = self._status_in_registry(job)
        job.state = DONE
        self._stats.finished(job.name, status, duration)
        jobs = self._jobs
        del jobs[job.run_id]
        if not jobs:
            self._idle.set()
        job.aio_task = job.rec = job.factory = job.retry = None
        if self._claims.active:  # a slot freed: it may take a durable run
            self._claims.ran(duration)
            self._claims.freed()

    def _not_started(self, job: Job) -> None:
        """The QUEUED → RUNNING write did not apply: it was cancelled or finished elsewhere."""
        self._lanes.release(job)
        close_coro(job.coro)
        job.coro = None
        self._finish_local(job, self._status_in_registry(job), RunStatus.QUEUED, None)

    def _make_coro(self, job: Job) -> Awaitable[Any]:
        assert job.factory is not None
        try:
            return job.factory()
        except Exception as exc:  # recorded as the run's failure
            return _raise(exc)

    def _settle(
        self, job: Job, status: RunStatus, result: Any, error: BaseException | None
    ) -> None:
        """Record the end of a running job (unless a cancel already recorded it)."""
        self._running -= 1
        if job.group is not None:
            self._lanes.release(job)
        job.aio_task = None
        duration = time.monotonic() - job.started
        if self._claims.active:
            self._claims.ran(duration)
        if job.cancel_requested:
            status = RunStatus.CANCELLED  # cancel_task (or another manager) already wrote it
        else:
            if result is not None and type(result) not in _PLAIN_SMALL:
                try:
                    result, refused = self._recordable(job, result)
                except Exception as exc:  # an odd result must not stop the executor
                    result, refused = (
                        None,
                        ResultNotStorable(f"the result could not be read: {exc!r}"),
                    )
                if refused is not None:
                    status, error = RunStatus.FAILED, refused
            if error is None:
                written = self._writer.finish(job, status, time_ns() // 1000, result, None, None)
            else:
                # A failed command still has its exit code, CPU time and memory to record.
                failed = error.result if isinstance(error, CommandFailed) else None
                # A durable run's last attempt failed: a dead letter, in the same write.
                written = self._writer.finish(
                    job, status, now_us(), failed, type(error).__name__,
                    describe_error(error, job), dead=job.task is not None,
                )  # fmt: skip
            if written is None:  # the writer calls _on_finished once the write is applied
                # Its code has ended: it no longer counts as active (wait_all, shutdown),
                # only its terminal write is on its way.
                job.state = FINISHING
                job.outcome = (status, duration, error)
                self._finishing[job.run_id] = job
                jobs = self._jobs
                if jobs.get(job.run_id) is job:
                    del jobs[job.run_id]
                    if not jobs:
                        self._idle.set()
                if self._claims.active:
                    self._claims.freed()
                return
            if not written:
                self._discarded(job, status)
                status = self._status_in_registry(job)
        self._ended(job, status, duration, error)

    def _on_finished(self, job: Job, applied: bool) -> None:
        """A terminal write the writer applied later: now the run has really ended."""
        if self._finishing.pop(job.run_id, None) is not job:
            return  # given up on at shutdown, and already settled
        status, duration, error = job.outcome
        if not applied:
            self._discarded(job, status)
        self._ended(job, status if applied else self._status_in_registry(job), duration, error)

    def _discarded(self, job: Job, status: RunStatus) -> None:
        """Its record had ended (cancelled, swept) or gone to another manager: say so, beat now."""
        self._log.warning(
            "result_discarded", run_id=job.run_id, name=job.name, status=status.value,
            detail="the run ended here, but its record had already ended (cancelled by "
            "another process, or recorded interrupted while this manager was unreachable) "
            "or was given to another manager: the record is kept as it is",
        )  # fmt: skip
        self._heartbeat.wake()

    def _ended(
        self, job: Job, status: RunStatus, duration: float | None, error: BaseException | None
    ) -> None:
        if status is RunStatus.FAILED:
            self._log.error(
                "run_failed", run_id=job.run_id, name=job.name, status="failed",
                attempt=job.attempt, duration=duration, exc_info=error,
            )  # fmt: skip
        elif self._debug:
            self._log.debug(
                f"run_{status.value}", run_id=job.run_id, name=job.name, status=status.value,
                attempt=job.attempt, duration=duration,
            )  # fmt: skip
        self._finish_local(job, status, RunStatus.RUNNING, duration, error)

    def _finish_local(
        self,
        job: Job,
        status: RunStatus,
        previous: RunStatus,
        duration: float | None,
        error: BaseException | None = None,
    ) -> None:
        job.state = DONE
        self._stats.finished(job.name, status, duration)
        if self._listeners:
            self._events.emit(job, status, previous, error=error, duration=duration)
        waiters = job.waiters
        if waiters:
            job.waiters = None
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        jobs = self._jobs
        if jobs.get(job.run_id) is job:  # _forget(), inlined
            del jobs[job.run_id]
            if not jobs:
                self._idle.set()
        job.coro = job.factory = job.retry = job.aio_task = job.timer = job.rec = None
        if self._claims.active:
            self._claims.freed()

    def _status_in_registry(self, job: Job) -> RunStatus:
        """The terminal status another writer gave a run our write could not change."""
        rec = job.rec
        if rec is not None and rec.status.is_terminal:
            return rec.status
        return RunStatus.CANCELLED

    def _requeue(self, job: Job, error: BaseException) -> None:
        assert job.retry is not None
        assert self._loop is not None
        self._running -= 1
        self._lanes.release(job)
        job.aio_task = None
        delay = job.retry.delay(job.attempt)
        next_attempt = job.attempt + 1
        changes = {
            "attempt": next_attempt,
            "error_type": type(error).__name__,
            "error_message": describe_error(error, job),
        }
        if not self._writer.cas(job, RunStatus.QUEUED, changes):
            self._finish_local(job, self._status_in_registry(job), RunStatus.RUNNING, None)
            return
        self._log.warning(
            "run_retrying", run_id=job.run_id, name=job.name, status="queued",
            attempt=next_attempt - 1, next_attempt=next_attempt, delay=delay,
            error_type=type(error).__name__, error_message=str(error),
        )  # fmt: skip
        job.attempt = next_attempt
        job.state = QUEUED
        if self._listeners:
            self._events.emit(job, RunStatus.QUEUED, RunStatus.RUNNING, error=error)
        self._delayed += 1
        job.timer = self._loop.call_later(delay, self._release_delayed, job)

    def _recordable(self, job: Job, result: Any) -> tuple[Any, ResultNotStorable | None]:
        """The result as recorded, or why no registry could store it (the run then fails).

        Not JSON or over ``max_payload_bytes``: recorded as None, with a warning.
        """
        if type(result) is str:
            problem = text_problem(result)
            if problem is not None:
                return None, ResultNotStorable(f"the result holds {problem}")
            if len(result) <= self._max_short_str:
                return result, None
        try:
            value = _JSON.validate_python(result)
            if isinstance(value, dict | list):
                problem = json_problem(value, "the result")
                if problem is not None:
                    return None, ResultNotStorable(problem)
            size = _payload_size(value)  # NaN and infinities pass JsonValue; this refuses them
        except (ValidationError, ValueError):
            self._log.warning(
                "run_result_not_json",
                run_id=job.run_id,
                name=job.name,
                result_type=type(result).__name__,
                detail="the run completed but its result is not JSON; recorded result=None. "
                "Return JSON-compatible values (dict, list, str, numbers, bool, None).",
            )
            return None, None
        if self._max_payload is not None and size > self._max_payload:
            self._log.warning(
                "run_result_too_large",
                run_id=job.run_id,
                name=job.name,
                size=size,
                max_payload_bytes=self._max_payload,
                detail="the run completed but its result is over max_payload_bytes; "
                "recorded result=None. Store large results elsewhere and return a reference.",
            )
            return None, None
        return result, None

    def _check_parameters(self, parameters: Mapping[str, Any]) -> None:
        if self._max_payload is not None and parameters:
            size = _payload_size(parameters)
            if size > self._max_payload:
                raise ValueError(
                    f"parameters are {size} bytes of JSON, over max_payload_bytes="
                    f"{self._max_payload}: pass a reference (an id, a URL) instead of the data"
                )


def _payload_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON, as a registry stores it."""
    return len(
        json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    )


async def _raise(exc: Exception) -> Any:
    raise exc


class _TakenOver(Exception):
    """A durable run's start did not apply: another manager has it (see `_once_started`)."""


async def _once_started(writer: Writer, job: Job, coro: Awaitable[Any]) -> Any:
    """Run ``coro`` once the run's RUNNING write has applied; else raise `_TakenOver`.

    For a durable run's retry (a claimed run is RUNNING from its claim): while it waits
    for its backoff, recorded QUEUED under this manager, the manager may be swept (its
    heartbeat ran late) and the run given back and claimed elsewhere. The compare-and-set
    QUEUED → RUNNING lets exactly one of them run it.
    The run's duration counts from here on (its code's, which sizes the claim prefetch).
    """
    try:
        applied = await writer.started(job)
    except BaseException:  # cancelled or timed out while waiting: the code never starts
        close_coro(coro)
        raise
    if not applied:
        close_coro(coro)
        raise _TakenOver(job.run_id)
    job.started = time.monotonic()
    return await coro
