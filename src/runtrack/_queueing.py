"""Admission: runs wait in lanes (or for a delay, or for their id's answer) until a slot frees.

`Queueing` is the mixin of `BackgroundTaskManager` that puts jobs in the lanes, holds the
delayed ones and those whose chosen id the registry has yet to answer for, and creates
executors for waiting runs (`_pump`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from contextvars import Context
from types import CoroutineType
from typing import Any, Final, NoReturn

from pydantic import ValidationError

from runtrack._admission import DONE, QUEUED, SUBMITTING, Job
from runtrack._clock import now_us
from runtrack._exceptions import (
    DuplicateRunError,
    ManagerClosedError,
    QueueFullError,
    RuntrackError,
)
from runtrack._execution import close_coro
from runtrack._models import Retry, Run, new_run_id
from runtrack._state import ManagerCore, State
from runtrack._stats import ManagerStats
from runtrack._status import RunStatus
from runtrack._submission import check_awaitable, check_collisions, is_async_callable, name_of

__all__ = ["FIRST_BATCH", "Queueing"]

#: Executors the pump creates at first; doubled while runs still wait, up to `_MAX_BATCH`.
FIRST_BATCH: Final = 8
_MAX_BATCH: Final = 4096


class Queueing(ManagerCore):
    """Admission of waiting runs, mixed into `BackgroundTaskManager`."""

    def _announce_queued(self, job: Job, *, inserted: bool) -> None:
        """The QUEUED transition's event and log line (start_task inlines the same)."""
        if inserted and self._listeners:
            self._events.emit(job, RunStatus.QUEUED, None)
        if self._debug:
            self._log.debug(
                "run_queued", run_id=job.run_id, name=job.name, status="queued",
                attempt=job.attempt,
            )  # fmt: skip

    def _schedule(
        self,
        job: Job,
        loop: asyncio.AbstractEventLoop,
        delay: float | None,
        *,
        hold: bool = False,
    ) -> None:
        if hold:
            self._delayed += 1
            task = loop.create_task(self._admit_when_free(job, delay))
            job.timer = task
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif delay:
            self._delayed += 1
            job.timer = loop.call_later(delay, self._release_delayed, job)
        else:
            self._push(job, loop)

    async def _admit_when_free(self, job: Job, delay: float | None) -> None:
        """Admit a run with a chosen id once the registry says the id was free (or QUEUED).

        An id that names a run already running or ended elsewhere is refused: the coroutine
        is closed and the record left untouched.
        """
        refusal: BaseException | None = None
        status: RunStatus | None = None
        try:
            status = await self._writer.existing_status(job)
        except Exception as exc:  # the registry refused the record itself
            refusal = exc
        if job.state != QUEUED:
            return  # cancelled meanwhile
        job.timer = None
        self._delayed -= 1
        if refusal is None and status in (None, RunStatus.QUEUED):
            assert self._loop is not None
            self._schedule(job, self._loop, delay)
            return
        error = refusal or DuplicateRunError(job.run_id)
        self._log.error(
            "run_refused", run_id=job.run_id, name=job.name, error=str(error),
            recorded_status=None if status is None else status.value,
        )  # fmt: skip
        job.state = DONE
        close_coro(job.coro)
        job.coro = None
        waiters, job.waiters = job.waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)
        self._forget(job)

    def _admit_check(self, run_id: str) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or self._state is not State.RUNNING:
            loop = self._start()
        if run_id in self._jobs or run_id in self._finishing:
            raise DuplicateRunError(run_id, where="manager")
        if self._max_pending is not None:
            free = self._limit - self._running
            if self._waiting + self._delayed - max(free, 0) >= self._max_pending:
                raise QueueFullError(self._max_pending)
        return loop

    def _push(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting += 1
        self._lanes.push(job)
        if not self._pump_scheduled and self._executors < self._limit:
            self._pump_scheduled = True
            loop.call_soon(self._pump)

    def _release_delayed(self, job: Job) -> None:
        job.timer = None
        if job.state != QUEUED:
            return
        self._delayed -= 1
        assert self._loop is not None
        self._push(job, self._loop)

    def _pump(self) -> None:
        """Create executors for waiting runs, a batch per loop iteration.

        An executor runs jobs back to back for as long as they finish without blocking, so a
        flood of quick runs needs few executors. Only when runs are still waiting at the
        next iteration (every executor is blocked inside a run) is a larger batch created,
        doubling up to the concurrency limit: no Task per run, yet no run waits for long.
        """
        self._pump_scheduled = False
        if self._heartbeat.held():  # the heartbeat calls us again (see Presence.held)
            return
        free = self._limit - self._executors
        admissible = self._lanes.admissible() - self._starting
        if free <= 0 or admissible <= 0:
            self._ramp = FIRST_BATCH
            return
        need = min(admissible, free, self._ramp)
        self._ramp = min(self._ramp * 2, _MAX_BATCH)
        loop = self._loop
        assert loop is not None
        self._executors += need
        self._starting += need
        tasks = self._executor_tasks
        for _ in range(need):
            # The loop keeps only weak references to tasks: hold them until they end.
            # An empty context: each run gets its caller's variables (see _executor).
            task = loop.create_task(self._executor(), context=Context())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        # Look again next iteration, after the new executors had their first go.
        self._pump_scheduled = True
        loop.call_soon(self._pump)

    def _forget(self, job: Job) -> None:
        jobs = self._jobs
        if jobs.get(job.run_id) is job:
            del jobs[job.run_id]
            if not jobs:
                self._idle.set()

    def _register(self, job: Job) -> None:
        if not self._jobs:
            self._idle.clear()
        self._jobs[job.run_id] = job

    def _job_for(
        self,
        fn_or_coro: Callable[..., Any] | Awaitable[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        name: str | None,
        run_id: str | None,
        parameters: Mapping[str, Any] | None,
        tags: Mapping[str, str] | None,
        group: str | None,
        priority: int,
        timeout: float | None,
        retry: Retry | None,
        delay: float | None,
        idempotency_key: object = None,
    ) -> tuple[Run, Job, asyncio.AbstractEventLoop]:
        """Validate what `submit` / `start_call` were given and build the job (not queued)."""
        factory: Callable[[], Awaitable[Any]] | None = None
        coro: Awaitable[Any] | None = None
        if callable(fn_or_coro) and not inspect.isawaitable(fn_or_coro):
            check_collisions(
                fn_or_coro,
                name=name, run_id=run_id, parameters=parameters, tags=tags, group=group,
                priority=priority, timeout=timeout, retry=retry, delay=delay,
                idempotency_key=idempotency_key,
            )  # fmt: skip
            if is_async_callable(fn_or_coro):
                factory = functools.partial(fn_or_coro, *args, **kwargs)
            else:  # a plain function: it runs in a worker thread
                factory = self._threads.factory(fn_or_coro, args, kwargs)
        elif inspect.isawaitable(fn_or_coro):
            check_awaitable(fn_or_coro, "submit")
            coro = fn_or_coro
            if args or kwargs or retry is not None:
                close_coro(coro)
                raise TypeError(
                    "submit() got a coroutine together with arguments or retry=: pass the "
                    "async function itself, as submit(fn, *args, retry=...), so it can be "
                    "called again"
                )
        else:
            raise TypeError(
                f"submit() takes an async function or a coroutine, got {type(fn_or_coro).__name__}"
            )
        if retry is not None and not isinstance(retry, Retry):
            close_coro(coro)  # type: ignore[unreachable]
            raise TypeError(f"retry must be a runtrack.Retry, got {type(retry).__name__}")
        if delay is not None and (isinstance(delay, bool) or not delay >= 0):
            close_coro(coro)
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        try:
            run = Run(
                run_id=run_id or new_run_id(),
                name=name or name_of(fn_or_coro),
                parameters=dict(parameters or {}),
                tags=dict(tags or {}),
                group=group,
                priority=priority,
                timeout=timeout,
                max_attempts=retry.attempts if retry is not None else 1,
                owner=self.owner,
            )
            self._check_parameters(run.parameters)
            loop = self._admit_check(run.run_id)
        except (ValidationError, RuntrackError, ValueError):
            close_coro(coro)
            raise
        job = Job.of_run(run, run.name, coro, self._default_timeout, factory, retry)
        return run, job, loop

    def _start_task(self, run: Run, coro: Awaitable[Any]) -> str:
        if not isinstance(run, Run):
            close_coro(coro)  # type: ignore[unreachable]
            raise TypeError(f"start_task() takes a runtrack.Run first, got {type(run).__name__}")
        if type(coro) is not CoroutineType:
            check_awaitable(coro, "start_task")
        try:
            if run.parameters:
                self._check_parameters(run.parameters)
            loop = self._admit_check(run.run_id)
        except BaseException:
            close_coro(coro)
            raise
        job = Job.of_run(run, run.name or name_of(coro), coro, self._default_timeout)
        try:
            inserted = self._writer.insert(job)
        except DuplicateRunError:
            close_coro(coro)
            raise
        if self._hold_chosen_ids and "run_id" in run.model_fields_set:
            # A chosen id may name a run that already ended: it must not run again.
            self._register(job)
            self._announce_queued(job, inserted=inserted)
            self._schedule(job, loop, None, hold=True)
            return job.run_id
        # What _push() does, inlined: this is the hot path of every run.
        jobs = self._jobs
        if not jobs:
            self._idle.clear()
        jobs[job.run_id] = job
        if self._listeners and inserted:
            self._events.emit(job, RunStatus.QUEUED, None)
        if self._debug:
            self._log.debug(
                "run_queued", run_id=job.run_id, name=job.name, status="queued",
                attempt=job.attempt,
            )  # fmt: skip
        self._waiting += 1
        self._lanes.push(job)
        if not self._pump_scheduled and self._executors < self._limit:
            self._pump_scheduled = True
            loop.call_soon(self._pump)
        return job.run_id

    def _start_job(
        self, job: Job, loop: asyncio.AbstractEventLoop, delay: float | None, *, chosen_id: bool
    ) -> str:
        inserted = self._writer.insert(job)
        self._register(job)
        self._announce_queued(job, inserted=inserted)
        self._schedule(job, loop, delay, hold=self._hold_chosen_ids and chosen_id)
        return job.run_id

    async def _submit_job(
        self, run: Run, job: Job, loop: asyncio.AbstractEventLoop, delay: float | None
    ) -> Run:
        # Reserve the id so a concurrent submit of the same id fails here, not in the registry;
        # shutdown waits for it (its grace) but leaves it to finish here.
        job.state = SUBMITTING
        self._register(job)
        done: asyncio.Future[None] = loop.create_future()
        self._submits.add(done)
        try:
            coro = job.coro
            try:
                inserted = await self._writer.insert_now(job)
            except BaseException:
                self._forget(job)
                close_coro(coro)
                raise
            if not inserted:
                self._forget(job)
                close_coro(coro)
                raise DuplicateRunError(job.run_id)
            self._announce_queued(job, inserted=True)
            if self._state is not State.RUNNING:  # shutdown began while we wrote: it is recorded
                await self._cancel_submitted(job)
            job.state = QUEUED
            self._schedule(job, loop, delay)
            return run
        finally:
            self._submits.discard(done)
            done.set_result(None)

    async def _cancel_submitted(self, job: Job) -> NoReturn:
        """Record CANCELLED a run submitted while shutdown began, and refuse the submit."""
        # Still SUBMITTING while its CANCELLED write lands: shutdown leaves it to us.
        close_coro(job.coro)
        job.coro = None
        try:
            await self._bounded(
                self._writer.cas_now(job, RunStatus.CANCELLED, {"finished_at": now_us()})
            )
        finally:
            self._finish_local(job, RunStatus.CANCELLED, RunStatus.QUEUED, None)
        raise ManagerClosedError(self._state.value)

    def _snapshot(self) -> ManagerStats:
        counts = dict.fromkeys(RunStatus, 0)
        counts.update(self._stats.totals())
        queued = self._waiting + self._delayed
        counts[RunStatus.QUEUED] = queued
        counts[RunStatus.RUNNING] = self._running
        return ManagerStats(
            state=self._state.value,
            owner=self.owner,
            counts=counts,
            queued=queued,
            running=self._running,
            max_concurrency=self._max_concurrency,
            max_pending=self._max_pending,
            group_limits=dict(self._lanes.group_limits),
            running_by_group=dict(self._lanes.running_by_group),
            by_name=self._stats.by_name(),
            queue_depth=self._depth.latest,
        )
