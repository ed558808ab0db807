"""Heartbeats and lease checks: how a manager shows it is alive and finds dead ones.

On a registry that keeps managers (`ManagerPresence`: memory, SQL, Redis) the manager's
own row carries its heartbeat, and its runs are not written per beat (see `_replicas`).
On any other registry, every ``interval`` the manager's running runs get a heartbeat, and
their statuses are read back (a run cancelled or ended by another process is stopped
here); three times per lease the runs of managers that stopped heartbeating are recorded
interrupted (see `_leases`). A registry that is away is logged once when a duty starts
failing and once when it works again, never a traceback per beat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from runtrack._admission import RUNNING
from runtrack._clock import now_us
from runtrack._leases import interrupt_expired
from runtrack._replicas import Presence
from runtrack._writer import DirectWriter
from runtrack.registry.base import ManagerPresence

if TYPE_CHECKING:
    from runtrack._admission import Job
    from runtrack._logging import Logger
    from runtrack._models import RunEvent
    from runtrack._writer import Writer
    from runtrack.registry.base import RunRegistry

__all__ = ["Heartbeat"]


class Heartbeat:
    """The heartbeat loop of one manager."""

    def __init__(
        self,
        *,
        registry: RunRegistry,
        writer: Writer,
        owner: str,
        interval: float,
        lease: timedelta,
        jobs: dict[str, Job],
        on_conflict: Callable[[str], None],
        notify: Callable[[RunEvent], None],
        log: Logger,
        poll_interval: float = 1.0,
        counts: Callable[[], tuple[int, int | None]] = lambda: (0, None),
        resume: Callable[[], None] = lambda: None,
    ) -> None:
        self._registry = registry
        self._writer = writer
        self._owner = owner
        self._interval = interval
        self._lease = lease
        self._jobs = jobs
        self._on_conflict = on_conflict
        self._notify = notify
        self._log = log
        self._failing: set[str] = set()  # duties failing now (logged once)
        self.presence: Presence | None = None
        if isinstance(registry, ManagerPresence):
            self.presence = Presence(
                registry=registry, writer=writer, direct=isinstance(writer, DirectWriter),
                owner=owner, interval=interval, poll_interval=poll_interval, lease=lease,
                jobs=jobs, counts=counts, on_conflict=on_conflict, notify=notify, log=log,
                failed=self._failed, recovered=self._recovered, resume=resume,
            )  # fmt: skip

    async def run(self, running: Callable[[], bool]) -> None:
        """Beat every interval while ``running()`` holds."""
        if self.presence is not None:
            await self.presence.run(running)
            return
        # Expired leases are looked for three times per lease, not at every beat: each
        # look reads every RUNNING run of the registry.
        every = self._lease.total_seconds() / 3
        next_look = 0.0
        while running():
            await asyncio.sleep(self._interval)
            await self.beat()
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + every
                await self.interrupt_expired()

    async def interrupt_expired(self) -> None:
        """Record FAILED the runs of managers that stopped heartbeating (see `_leases`)."""
        if self.presence is not None:
            await self.presence.interrupt_expired()
            return
        try:
            await interrupt_expired(
                self._registry, owner=self._owner, lease=self._lease, log=self._log,
                notify=self._notify,
            )  # fmt: skip
        except Exception as exc:  # the registry may be away; try again next beat
            self._failed("lease_check", exc)
        else:
            self._recovered("lease_check")

    async def beat(self) -> None:
        """One heartbeat of the running runs, and a look at their statuses."""
        if self.presence is not None:
            await self.presence.beat()
            await self.presence.poll()
            return
        running = [j for j in self._jobs.values() if j.state == RUNNING]
        if not running:
            return
        beat = now_us()
        for job in running:
            self._writer.update(job.run_id, {"heartbeat_at": beat})
        try:
            statuses = await self._writer.status_of([j.run_id for j in running])
        except Exception as exc:  # the registry may be away; try again next beat
            self._failed("heartbeat", exc)
            return
        self._recovered("heartbeat")
        for job in running:
            status = statuses.get(job.run_id)
            if status is not None and status.is_terminal:
                self._log.info(
                    "run_cancelled_elsewhere", run_id=job.run_id, name=job.name,
                    status=status.value,
                )  # fmt: skip
                self._on_conflict(job.run_id)

    def held(self) -> bool:
        """Whether runs must wait before starting (see `Presence.held`)."""
        presence = self.presence
        return presence is not None and presence.held()

    def wake(self) -> None:
        """A write was refused: beat now (this manager may have been declared dead)."""
        if self.presence is not None:
            self.presence.wake()

    async def unregister(self) -> None:
        """Remove this manager's row from the registry, if it keeps one."""
        if self.presence is not None:
            await self.presence.unregister()

    def _failed(self, duty: str, exc: BaseException) -> None:
        """Log a duty's failure once, when it starts failing (not every beat)."""
        if duty not in self._failing:
            self._failing.add(duty)
            self._log.warning(
                f"{duty}_failed", error=f"{type(exc).__name__}: {exc}",
                detail="retried every heartbeat; logged again when it works",
            )  # fmt: skip

    def _recovered(self, duty: str) -> None:
        if duty in self._failing:
            self._failing.discard(duty)
            self._log.warning(f"{duty}_recovered")
