"""The queue depth a manager reports: QUEUED runs in its registry by priority.

`BackgroundTaskManager.queue_depth` reads it from the registry (one grouped query, or
one hash read on Redis: see `QueueDepthReading`); a loop of its own reads it again once
per ``heartbeat_interval``, so that the synchronous ``stats()`` and ``/metrics`` carry a
recent figure without waiting for the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

from runtrack._logging import Logger
from runtrack.registry._depth import queue_depth_of
from runtrack.registry.base import RunRegistry

__all__ = ["QueueDepth"]

#: Most seconds a shutdown waits for a read of the queue depth that is under way (and no
#: more than the manager's ``registry_timeout``).
_FINISH_TIMEOUT: Final = 5.0


class QueueDepth:
    """The latest queue depth read from one registry."""

    def __init__(
        self, registry: RunRegistry, interval: float, log: Logger, finish_timeout: float = 5.0
    ) -> None:
        self._registry = registry
        self._interval = interval
        self._finish_timeout = min(finish_timeout, _FINISH_TIMEOUT)
        self._log = log
        self._failing = False
        self.latest: dict[int, int] | None = None
        """The last figure read, None before the first read."""

    async def read(self) -> dict[int, int]:
        """Read the figure now (and keep it as `latest`).

        A cancellation (the manager shutting down) waits for the registry call to end
        before it goes through: a call cut in the middle, or left running while the
        registry closes, would leave its connection to the garbage collector.
        """
        call = asyncio.ensure_future(queue_depth_of(self._registry))
        try:
            depth = await asyncio.shield(call)
        except asyncio.CancelledError:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._finish_timeout
            while not call.done() and loop.time() < deadline:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([call], timeout=deadline - loop.time())
            if call.done() and not call.cancelled():
                call.exception()  # seen: nobody waits for it any more
            raise
        self.latest = depth
        return dict(depth)

    async def run(self, running: Callable[[], bool]) -> None:
        """Read the figure every interval while ``running()`` holds.

        The first read waits one interval too: a manager's start (its registration, its
        first submits) is not slowed by it.
        """
        while True:
            await asyncio.sleep(self._interval)
            if not running():
                return
            try:
                await self.read()
            except Exception as exc:  # the registry may be away; try again next time
                if not self._failing:
                    self._failing = True
                    self._log.warning("queue_depth_failed", error=repr(exc))
            else:
                self._failing = False
