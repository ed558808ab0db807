"""A manager's presence in a registry that keeps managers (`ManagerPresence`).

What `Heartbeat` does on such a registry, at a cost that does not grow with the runs:

- at start, the manager registers its row (owner, host, pid, its own lease, limits);
- every ``heartbeat_interval``: one write of its row's heartbeat and running count;
- every ``poll_interval``: one indexed read of its runs recorded CANCELLED by other
  processes since the last look, whose coroutines it stops; on a registry that pushes
  (`Notifying`: PostgreSQL, Redis) such a cancel also stops the run at once, as soon as it
  is notified (see `_notifications`), and the poll makes up a lost notification;
- three times per lease: `ManagerPresence.interrupt_dead_managers`, which reads the
  managers and sweeps the dead ones (their own lease decides), one statement per owner;
- at shutdown, after the last writes, it removes its row.

A manager that was paused past its lease (SIGSTOP, a VM frozen) and swept meanwhile learns
it at its next heartbeat (the row is gone) or when a write of a run is refused (`wake`):
it stops locally the runs whose records the survivor ended, without writing them, and
registers again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Final

from runtrack._admission import QUEUED, RUNNING
from runtrack._models import RunEvent, utcnow
from runtrack._notifications import Notifications
from runtrack._presence import ManagerInfo, interrupted_event
from runtrack._status import TERMINAL, RunStatus
from runtrack._uncut import uncut
from runtrack.registry._claiming import TaskClaiming
from runtrack.registry.base import Notifying

if TYPE_CHECKING:
    from runtrack._admission import Job
    from runtrack._logging import Logger
    from runtrack._writer import Writer
    from runtrack.registry.base import ManagerPresence

__all__ = ["Presence"]

#: How far back each look for cancelled runs reaches before the previous one, in seconds:
#: their ``finished_at`` comes from the clock of the process that cancelled them.
CLOCK_SLACK: Final = 10.0
#: Jobs read per loop turn when the records are read in place (the memory registry).
_SLICE: Final = 5000


class Presence:
    """Registration, heartbeat, cancel polling and lease checks on a `ManagerPresence`."""

    def __init__(
        self,
        *,
        registry: ManagerPresence,
        writer: Writer,
        direct: bool,
        owner: str,
        interval: float,
        poll_interval: float,
        lease: timedelta,
        jobs: dict[str, Job],
        counts: Callable[[], tuple[int, int | None]],
        on_conflict: Callable[[str], None],
        notify: Callable[[RunEvent], None],
        log: Logger,
        failed: Callable[[str, BaseException], None],
        recovered: Callable[[str], None],
        resume: Callable[[], None] = lambda: None,
    ) -> None:
        self._registry = registry
        self._writer = writer
        self._direct = direct  # the memory registry: records are read in place
        self._owner = owner
        self._interval = interval
        self._poll_interval = poll_interval
        self._lease = lease
        self._lease_seconds = lease.total_seconds()
        self._jobs = jobs
        self._counts = counts
        self._on_conflict = on_conflict
        self._notify = notify
        self._log = log
        self._failed = failed
        self._recovered = recovered
        self._started_at = utcnow()
        self._registered = False
        self._since = self._started_at
        self._woken = asyncio.Event()
        self._resume = resume
        # When the last heartbeat ended (monotonic): older than the lease means this
        # process did not run for that long (paused?), and it may have been declared dead.
        self._tick = time.monotonic()
        self._holding = False
        #: Called with a task name when another process announces new work (durable tasks).
        self.on_new_work: Callable[[str], None] = lambda _task: None
        self._notifications: Notifications | None = None
        if isinstance(registry, Notifying):
            self._notifications = Notifications(
                registry, owner, on_cancel=self._stop,
                on_new_work=self._new_work, log=log,
            )  # fmt: skip

    def _new_work(self, task: str) -> None:
        self.on_new_work(task)  # looked up now: the durable tasks set it after __init__

    def wake(self) -> None:
        """Beat and look for cancels now (a write was refused, or a push came)."""
        self._woken.set()

    def held(self) -> bool:
        """Whether runs must wait before starting: no heartbeat ended for over a lease.

        The process was paused (or its loop blocked) long enough to be declared dead: the
        next heartbeat says, and the survivor may have recorded the queued runs CANCELLED.
        Asked before each start, so it costs no registry read; `run` resumes admission
        once the heartbeat has ended.
        """
        if time.monotonic() - self._tick <= self._lease_seconds:
            return False
        if not self._holding:
            self._holding = True
            self.wake()
        return True

    async def run(self, running: Callable[[], bool]) -> None:
        """Register, listen, then beat, poll and look for dead managers while ``running()``."""
        await self.register()
        if self._notifications is not None:
            self._notifications.start_soon()
        self._ticked()
        look_every = self._lease.total_seconds() / 3
        now = time.monotonic()
        next_beat, next_poll, next_look = now + self._interval, now + self._poll_interval, now
        while running():
            now = time.monotonic()
            wait = min(next_beat, next_poll, next_look) - now
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        await self._woken.wait()
                except TimeoutError:
                    pass
            if not running():
                return
            now = time.monotonic()
            if self._woken.is_set():
                self._woken.clear()
                next_beat = next_poll = now
            if now >= next_beat:
                next_beat = now + self._interval
                await self.beat()
                self._ticked()
            if now >= next_poll:
                next_poll = now + self._poll_interval
                await self.poll()
            if now >= next_look:
                next_look = now + look_every
                await self.interrupt_expired()

    def _ticked(self) -> None:
        """A heartbeat has ended: runs may start again (see `held`)."""
        self._tick = time.monotonic()
        if self._holding:
            self._holding = False
            self._resume()

    def _info(self) -> ManagerInfo:
        running, limit = self._counts()
        return ManagerInfo(
            owner=self._owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at,
            heartbeat_at=utcnow(),
            lease_seconds=self._lease.total_seconds(),
            max_concurrency=limit,
            running=running,
        )

    async def register(self) -> None:
        """Write this manager's row (again)."""
        try:
            await uncut(self._registry.register_manager(self._info()))
        except Exception as exc:  # the registry may be away: the next beat registers
            self._registered = False
            self._failed("heartbeat", exc)
        else:
            self._registered = True
            self._recovered("heartbeat")

    async def beat(self) -> None:
        """One heartbeat of this manager's row; learn here if it was declared dead."""
        if not self._registered:
            await self.register()
            return
        running, _ = self._counts()
        try:
            alive = await uncut(self._registry.heartbeat_manager(self._owner, utcnow(), running))
        except Exception as exc:  # the registry may be away; try again next beat
            self._failed("heartbeat", exc)
            return
        self._recovered("heartbeat")
        if not alive:
            await self._declared_dead()

    async def _declared_dead(self) -> None:
        """Our row is gone: a survivor recorded our runs interrupted (we were paused?)."""
        self._log.warning(
            "manager_declared_dead",
            active=len(self._jobs),
            detail="this manager missed its lease (paused, or cut off from the registry) "
            "and another one recorded its runs interrupted: those runs are stopped here, "
            "their records are left as written, and the manager registers again",
        )
        # Durable runs it claimed but had not started were recorded interrupted by the
        # survivor (or queued again for another manager): they must not start here.
        unstarted = [
            job.run_id
            for job in list(self._jobs.values())
            if job.task is not None and job.state == QUEUED
        ]
        for run_id in unstarted:
            self._on_conflict(run_id)
        if unstarted and isinstance(self._registry, TaskClaiming):
            await self._release(unstarted)
        await self._stop_ended(list(self._jobs))
        await self.register()

    async def _release(self, run_ids: list[str]) -> None:
        """Give back those of ``run_ids`` still claimed by this manager.

        They were claimed after the sweep (the heartbeat was held up, not the process): no
        survivor would ever give them back.
        """
        assert isinstance(self._registry, TaskClaiming)
        try:
            await uncut(self._registry.release_runs(self._owner, run_ids))
        except Exception as exc:
            self._log.warning(
                "claimed_runs_not_released",
                runs=len(run_ids),
                error=f"{type(exc).__name__}: {exc}",
                detail="those claimed after this manager was declared dead stay QUEUED "
                "under its name until a survivor sweeps it (not after a clean shutdown): "
                "find them with list_runs(status=QUEUED) and give them back with "
                "registry.release_runs(owner, run_ids)",
            )

    async def poll(self) -> None:
        """Stop the runs of ours that another process recorded CANCELLED since the last look."""
        jobs = self._jobs
        if not jobs:
            self._since = utcnow()
            return
        if self._direct:
            await self._stop_ended_in_place()
            return
        start = utcnow()
        try:
            ids = await uncut(
                self._registry.cancelled_runs(
                    self._owner, self._since - timedelta(seconds=CLOCK_SLACK)
                )
            )
        except Exception as exc:  # the registry may be away; try again next poll
            self._failed("cancel_poll", exc)
            return
        self._recovered("cancel_poll")
        self._since = start
        self._stop(ids)

    async def _stop_ended_in_place(self) -> None:
        """The memory registry: read our jobs' records in place, a slice per loop turn."""
        jobs = list(self._jobs.values())
        for start in range(0, len(jobs), _SLICE):
            if start:
                await asyncio.sleep(0)  # let the loop breathe between slices
            ended = [
                job.run_id
                for job in jobs[start : start + _SLICE]
                if (rec := job.rec) is not None and rec.status in TERMINAL
            ]
            if ended:
                self._stop(ended)

    async def _stop_ended(self, run_ids: list[str]) -> None:
        """Stop here the runs among ``run_ids`` whose records have ended."""
        try:
            statuses = await uncut(self._writer.status_of(run_ids))
        except Exception as exc:  # the registry may be away; try again next poll
            self._failed("cancel_poll", exc)
            return
        jobs = self._jobs
        self._stop(
            [
                rid
                for rid, status in statuses.items()
                if status.is_terminal
                # a durable run the survivor put back in the queue (requeue_on_interrupt)
                or (
                    status is RunStatus.QUEUED
                    and (job := jobs.get(rid)) is not None
                    and job.task is not None
                    and job.state == RUNNING
                )
            ]
        )

    def _stop(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            job = self._jobs.get(run_id)
            if job is None or job.cancel_requested or job.state not in (QUEUED, RUNNING):
                continue
            self._log.info("run_cancelled_elsewhere", run_id=run_id, name=job.name)
            self._on_conflict(run_id)

    async def interrupt_expired(self) -> None:
        """Sweep the managers past their own lease; log and notify each run recorded."""
        now = utcnow()
        try:
            swept = await uncut(self._registry.interrupt_dead_managers(now, self._owner))
        except Exception as exc:  # the registry may be away; try again later
            self._failed("lease_check", exc)
            return
        self._recovered("lease_check")
        for run in swept:
            self._log.warning(
                "run_interrupted",
                run_id=run.run_id,
                name=run.name,
                run_owner=run.owner,
                status=run.status.value,
                detail="its manager stopped heartbeating (crashed?); recorded with "
                "error_type RunInterrupted",
            )
            self._notify(
                interrupted_event(
                    run.run_id,
                    run.name,
                    run.status,
                    run.previous,
                    at=now,
                    attempt=run.attempt,
                    group=run.group,
                )
            )

    async def unregister(self) -> None:
        """Stop listening, then remove this manager's row (a clean shutdown)."""
        if self._notifications is not None:
            await uncut(self._notifications.aclose())
        try:
            await self._registry.unregister_manager(self._owner)
        except Exception as exc:  # the row expires with the lease: survivors sweep nothing
            self._log.warning("unregister_failed", error=f"{type(exc).__name__}: {exc}")
