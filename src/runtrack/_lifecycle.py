"""A manager's life: started on first use, then shut down in four steps.

`Lifecycle` is the mixin of `BackgroundTaskManager` that binds it to the running event loop
and starts its background services, and that shuts it down: drain for the grace period,
cancel what is left, stop the background tasks, flush the writer (bounded by
``registry_timeout``), and end locally the runs whose terminal write was given up on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from runtrack._admission import RUNNING
from runtrack._announcing import Announcer
from runtrack._claims import ClaimLoop
from runtrack._exceptions import ManagerClosedError, RuntrackError
from runtrack._state import ManagerCore, State
from runtrack._status import RunStatus
from runtrack._uncut import settle

__all__ = ["Lifecycle"]


class Lifecycle(ManagerCore):
    """Starting and shutting down, mixed into `BackgroundTaskManager`."""

    _claims: ClaimLoop
    _announcer: Announcer | None

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._state is State.RUNNING and self._loop is not None:
            return self._loop
        if self._state is not State.CREATED:
            raise ManagerClosedError(self._state.value)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntrackError(
                "BackgroundTaskManager needs a running event loop: use it from async code"
            ) from None
        self._loop = loop
        self._state = State.RUNNING
        self._debug = self._log.is_enabled_for(logging.DEBUG)  # logging set up since __init__
        self._spawn_background(self._heartbeat.run(lambda: self._state is State.RUNNING))
        self._claims.start()
        self._spawn_background(self._depth.run(lambda: self._state is State.RUNNING))
        self._log.debug("manager_started", max_concurrency=self._max_concurrency)
        return loop

    def _spawn_background(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shutdown(self, grace: float | None) -> None:
        if self._state is State.CLOSED:
            return
        if self._state is State.CLOSING:
            await self._closed.wait()
            return
        self._state = State.CLOSING
        grace = self._options.shutdown_grace if grace is None else grace
        try:
            # Durable runs claimed but not started go back to the registry for others.
            await self._claims.stop(self._registry_timeout)
            if self._announcer is not None:
                await self._announcer.aclose(self._registry_timeout)
            await self._drain(grace)
            await self._cancel_all()
            if self._submits:  # they end themselves once their record is written (refused)
                await asyncio.wait(self._submits, timeout=2 * self._registry_timeout)
            stopped = await self._stop_background()
            # The registry calls they left under way finish meanwhile (see `uncut`): one
            # still running once the registry closes would open a connection nobody closes,
            # or write after this manager's row is removed.
            await asyncio.gather(
                self._writer.aclose(self._registry_timeout),
                settle(stopped, self._registry_timeout),
            )
            with contextlib.suppress(TimeoutError):  # its row expires with its lease
                async with asyncio.timeout(self._registry_timeout):
                    await self._heartbeat.unregister()
            # Terminal writes given up on: the runs have ended here all the same.
            for job in list(self._finishing.values()):
                del self._finishing[job.run_id]
                status, duration, error = job.outcome
                self._finish_local(job, status, RunStatus.RUNNING, duration, error)
        finally:
            self._state = State.CLOSED
            self._closed.set()
            self._log.debug("manager_closed")

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

    async def _stop_background(self) -> set[asyncio.Task[Any]]:
        """Cancel the background tasks (heartbeat, holds, listeners) and wait for them.

        Cancelled again while they last: a Redis call may swallow a cancellation (redis-py
        #2028), and the heartbeat loop ends anyway once it sees the manager closing.

        Returns:
            The tasks cancelled.
        """
        stopped = tasks = set(self._background)
        for _ in range(100):  # 10 s at most: a task that never ends is left behind
            if not tasks:
                return stopped
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=0.1)
        self._log.error("background_tasks_left", tasks=[repr(t) for t in tasks])
        return stopped
