"""Cancellation, shutdown's drain, and waits for the registry bounded by ``registry_timeout``.

`Cancelling` is the mixin of `BackgroundTaskManager` that stops queued and running runs
(recording the cancellation first, so it wins against a completion) and bounds every wait
for a write while the registry is unreachable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from runtrack._admission import DONE, FINISHING, QUEUED, RUNNING, SUBMITTING, Job
from runtrack._clock import now_us
from runtrack._exceptions import RegistryConfigError, RegistryUnavailableError
from runtrack._execution import close_coro
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
            if job.task is not None:
                job.task.cancel()
            await self._await_job(job, self._cancel_timeout)
            return True
        written = asyncio.ensure_future(self._writer.cas_now(job, RunStatus.CANCELLED, changes))
        if job.task is not None:
            job.task.cancel()
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
            if job.task is not None:
                job.task.cancel()
        elif job.state == QUEUED:
            self._drop_queued(job)
            self._finish_local(job, RunStatus.CANCELLED, RunStatus.QUEUED, None)

    async def _drain(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        while self._jobs:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            now = time.monotonic()
            self._log.info(
                "shutdown_waiting",
                grace_left=round(left, 3),
                runs=[
                    {
                        "run_id": j.run_id,
                        "name": j.name,
                        "status": "running" if j.state == RUNNING else "queued",
                        "running_for": round(now - j.started, 3) if j.state == RUNNING else None,
                    }
                    for j in list(self._jobs.values())[:50]
                ],
                active=len(self._jobs),
            )
            try:
                async with asyncio.timeout(min(left, 5.0)):
                    await self._idle.wait()
            except TimeoutError:
                continue

    async def _cancel_all(self) -> None:
        if not self._jobs:
            return
        self._log.warning("shutdown_cancelling", active=len(self._jobs))
        jobs = list(self._jobs.values())
        # The CANCELLED writes are flushed (for at most registry_timeout) by the writer's
        # aclose: none is waited for here, so an unreachable registry cannot hold us.
        await asyncio.gather(*(self._cancel_job(job, wait_write=False) for job in jobs))

    async def _stop_background(self) -> None:
        """Cancel the background tasks (heartbeat, holds, listeners) and wait for them.

        Cancelled again while they last: a Redis call may swallow a cancellation (redis-py
        #2028), and the heartbeat loop ends anyway once it sees the manager closing.
        """
        tasks = set(self._background)
        for _ in range(100):  # 10 s at most: a task that never ends is left behind
            if not tasks:
                return
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=0.1)
        self._log.error("background_tasks_left", tasks=[repr(t) for t in tasks])
