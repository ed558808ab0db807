"""Cancellation, waiting for runs, and waits for the registry bounded by ``registry_timeout``.

`Cancelling` is the mixin of `BackgroundTaskManager` that stops queued and running runs
(recording the cancellation first, so it wins against a completion) and bounds every wait
for a write while the registry is unreachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from runtrack._admission import DONE, FINISHING, QUEUED, RUNNING, SUBMITTING, Job
from runtrack._clock import now_us
from runtrack._exceptions import RegistryConfigError, RegistryUnavailableError, RunNotFoundError
from runtrack._execution import close_coro
from runtrack._models import Run, utcnow
from runtrack._state import ManagerCore
from runtrack._status import RunStatus

__all__ = ["Cancelling"]

_T = TypeVar("_T")


class Cancelling(ManagerCore):
    """Cancelling runs and bounded waits, mixed into `BackgroundTaskManager`."""

    async def _bounded(self, write: Awaitable[_T], what: str = "") -> _T:
        """Await registry writes; give up after ``registry_timeout`` seconds of an outage.

        A registry that is reachable but busy is waited for; one that failed the last
        write it was sent gets ``registry_timeout`` seconds.

        Raises:
            RegistryUnavailableError: the registry is unreachable (the writes are still
                retried in the background).
        """
        future = asyncio.ensure_future(write)
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=self._registry_timeout)
                if done:
                    return future.result()
                error = self._writer.unreachable()
                if isinstance(error, RegistryConfigError):
                    raise error
                if error is not None:
                    detail = f"not written within registry_timeout={self._registry_timeout:g}s"
                    raise RegistryUnavailableError(
                        self._backend, f"{what}; {detail}" if what else detail
                    )
        finally:
            if not future.done():
                future.cancel()

    async def _cancel_job(self, job: Job, *, wait_write: bool = True) -> bool:
        if job.state in (DONE, SUBMITTING):  # a submit still writing ends itself
            return False
        if job.state == FINISHING:  # it ended meanwhile: its terminal write is on its way
            if wait_write:
                await self._bounded(self._writer.settled(job.run_id))
            return False
        changes = {"finished_at": now_us()}
        stopped = "the run was stopped here; its CANCELLED record is written when it is back"
        if job.state == QUEUED:
            self._drop_queued(job)
            won = True
            if wait_write:
                written = asyncio.ensure_future(
                    self._writer.cas_now(job, RunStatus.CANCELLED, changes)
                )
                try:
                    won = await self._bounded(asyncio.shield(written), stopped)
                except RegistryUnavailableError:
                    self._finish_local(job, RunStatus.CANCELLED, RunStatus.QUEUED, None)
                    raise
            else:
                self._writer.cas(job, RunStatus.CANCELLED, changes)
            status = RunStatus.CANCELLED if won else self._status_in_registry(job)
            self._log.info(
                "run_cancelled", run_id=job.run_id, name=job.name, status=status.value,
                attempt=job.attempt,
            )  # fmt: skip
            self._finish_local(job, status, RunStatus.QUEUED, None)
            return won
        # Running: mark it first, so its completion is never recorded over the cancellation.
        if job.cancel_requested:
            await self._await_job(job, self._cancel_timeout)
            return False
        job.cancel_requested = True
        if not wait_write:
            self._writer.cas(job, RunStatus.CANCELLED, changes)
            if job.aio_task is not None:
                job.aio_task.cancel()
            await self._await_job(job, self._cancel_timeout)
            return True
        written = asyncio.ensure_future(self._writer.cas_now(job, RunStatus.CANCELLED, changes))
        if job.aio_task is not None:
            job.aio_task.cancel()
        await self._await_job(job, self._cancel_timeout)
        return await self._bounded(asyncio.shield(written), stopped)

    def _drop_queued(self, job: Job) -> None:
        """Take a queued job out of the lanes (or its timer) without running it."""
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
            self._delayed -= 1
        else:
            self._waiting -= 1
            self._lanes.discard(job)
        job.state = DONE  # the lanes skip it from now on
        close_coro(job.coro)
        job.coro = None

    async def _await_job(self, job: Job, timeout: float | None) -> bool:
        if job.state == DONE:
            return True
        assert self._loop is not None
        fut = self._loop.create_future()
        if job.waiters is None:
            job.waiters = []
        job.waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            if job.cancel_requested:
                self._log.error(
                    "run_ignores_cancellation",
                    run_id=job.run_id,
                    name=job.name,
                    waited=timeout,
                    detail="recorded CANCELLED, but its code is still running",
                )
            return False
        return True

    def _on_conflict(self, run_id: str) -> None:
        """A write of ours did not apply: the run was finished or cancelled elsewhere."""
        job = self._jobs.get(run_id)
        if job is None or job.cancel_requested:
            return
        if job.state == RUNNING:
            job.cancel_requested = True
            if job.aio_task is not None:
                job.aio_task.cancel()
        elif job.state == QUEUED:
            self._drop_queued(job)
            self._finish_local(job, RunStatus.CANCELLED, RunStatus.QUEUED, None)

    async def _cancel(self, run_id: str) -> bool:
        job = self._jobs.get(run_id)
        if job is not None:
            return await self._cancel_job(job)
        await self._bounded(self._writer.settled(run_id))  # our own writes land first
        try:
            run = await self.registry.transition(run_id, RunStatus.CANCELLED, finished_at=utcnow())
        except ValueError:
            return False
        return run is not None

    async def _wait(self, run_id: str) -> Run:
        job = self._jobs.get(run_id)
        if job is not None:
            await self._await_job(job, None)
        if job is not None or run_id in self._finishing:
            await self._bounded(self._writer.settled(run_id), "the run has ended here")
        delay = 0.01
        while True:
            run = await self.registry.get_run(run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            if run.status.is_terminal:
                return run
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
