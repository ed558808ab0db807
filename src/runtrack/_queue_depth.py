"""The queue depth a manager reports: QUEUED runs in its registry by priority.

`BackgroundTaskManager.queue_depth` reads it from the registry (one grouped query, or
one hash read on Redis: see `QueueDepthReading`); a loop of its own reads it again once
per ``heartbeat_interval``, so that the synchronous ``stats()`` and ``/metrics`` carry a
recent figure without waiting for the registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from runtrack._logging import Logger
from runtrack._replicas import _uncut
from runtrack.registry._depth import queue_depth_of
from runtrack.registry.base import RunRegistry

__all__ = ["QueueDepth"]


class QueueDepth:
    """The latest queue depth read from one registry."""

    def __init__(self, registry: RunRegistry, interval: float, log: Logger) -> None:
        self._registry = registry
        self._interval = interval
        self._log = log
        self._failing = False
        self.latest: dict[int, int] | None = None
        """The last figure read, None before the first read."""

    async def read(self) -> dict[int, int]:
        """Read the figure now (and keep it as `latest`)."""
        depth = await _uncut(queue_depth_of(self._registry))
        self.latest = depth
        return dict(depth)

    async def run(self, running: Callable[[], bool]) -> None:
        """Read the figure at once, then every interval while ``running()`` holds."""
        while running():
            try:
                await self.read()
            except Exception as exc:  # the registry may be away; try again next time
                if not self._failing:
                    self._failing = True
                    self._log.warning("queue_depth_failed", error=repr(exc))
            else:
                self._failing = False
            await asyncio.sleep(self._interval)
