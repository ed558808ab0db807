"""`QueueDepthReading`: how many runs are QUEUED in the registry, by priority.

The memory registry counts its records; SQL runs one grouped query on the status index;
Redis keeps a hash of counts by priority that every write script maintains. A registry
without it is read page by page (`queue_depth_of`).
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

from runtrack._status import RunStatus
from runtrack.registry.base import RunRegistry

__all__ = ["QueueDepthReading", "queue_depth_of"]

_PAGE: Final = 1000


@runtime_checkable
class QueueDepthReading(Protocol):
    """**Protocol:** a registry that counts its QUEUED runs by priority in one call."""

    async def queue_depth(self) -> dict[int, int]:
        """QUEUED runs by priority (priorities with none left out).

        Raises:
            RegistryUnavailableError: the backend could not be reached.
        """
        ...


async def queue_depth_of(registry: RunRegistry) -> dict[int, int]:
    """QUEUED runs of ``registry`` by priority, in one call where it offers one."""
    if isinstance(registry, QueueDepthReading):
        return await registry.queue_depth()
    depth: dict[int, int] = {}
    offset = 0
    while True:
        page = await registry.list_runs(status=RunStatus.QUEUED, limit=_PAGE, offset=offset)
        for run in page:
            depth[run.priority] = depth.get(run.priority, 0) + 1
        if len(page) < _PAGE:
            return dict(sorted(depth.items()))
        offset += _PAGE
