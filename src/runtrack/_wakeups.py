"""`Wakeups`: the claim loop's timer for the durable runs this process delayed.

A run recorded with a ``not_before`` (``fn.submit(delay=...)``, ``manager.requeue(run_id,
delay=...)``) is claimable from then on. The manager of the process that recorded it wakes
its claim loop at that time, so it claims the run on time; other managers find it by
their poll, within ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from datetime import datetime
from typing import Final

from runtrack._models import utcnow

__all__ = ["MAX_PENDING", "Wakeups"]

#: Most wake-up times kept (the earliest): beyond them, the claim loop's poll finds the runs.
MAX_PENDING: Final = 1000
#: Seconds a wake-up comes after its time, so that the run is due by then: two clocks
#: are read to place it on the event loop's.
_MARGIN: Final = 0.001


class Wakeups:
    """Calls ``wake`` at each time given to `at`, with one timer: the earliest time's.

    Args:
        wake: What to call (the claim loop's ``wake``).
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._times: list[float] = []  # event loop times, sorted
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def at(self, loop: asyncio.AbstractEventLoop | None, when: datetime) -> None:
        """Call ``wake`` on ``loop`` at ``when`` (at once if it has passed).

        Safe to call from any thread; a None or closed loop is ignored.
        """
        if loop is None or loop.is_closed():
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is not loop:
            loop.call_soon_threadsafe(self.at, loop, when)
            return
        due = loop.time() + max((when - utcnow()).total_seconds(), 0.0) + _MARGIN
        times = self._times
        bisect.insort(times, due)
        del times[MAX_PENDING:]
        if self._timer is None or due < self._timer.when() or loop is not self._loop:
            self._arm(loop)

    def cancel(self) -> None:
        """Drop every pending wake-up (the claim loop stops)."""
        self._times.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop = loop
        self._timer = loop.call_at(self._times[0], self._fire) if self._times else None

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        passed = bisect.bisect_right(self._times, loop.time())
        del self._times[: max(passed, 1)]
        self._timer = None
        self._wake()
        self._arm(loop)
