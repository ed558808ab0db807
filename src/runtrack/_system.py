"""What the machine a manager runs on is doing: load, CPUs and memory.

Shown by ``GET /health`` and ``runtrack stats`` so that a slow run can be told apart from a
busy machine. Read with psutil, cheaply (no sampling interval), on every call.
"""

from __future__ import annotations

import os

import psutil
from pydantic import BaseModel, ConfigDict

__all__ = ["SystemStats", "system_stats"]


class SystemStats(BaseModel):
    """A snapshot of the machine and of this process."""

    model_config = ConfigDict(frozen=True)

    cpu_count: int
    """Logical CPUs."""
    load_1m: float
    """Load average over 1 minute (runnable processes)."""
    load_5m: float
    """Load average over 5 minutes."""
    load_15m: float
    """Load average over 15 minutes."""
    memory_total_bytes: int
    """Physical memory."""
    memory_available_bytes: int
    """Memory available to new processes without swapping."""
    memory_percent: float
    """Share of physical memory in use, 0..100."""
    process_rss_bytes: int
    """Resident memory of this process."""


def system_stats() -> SystemStats:
    """Load, CPUs and memory of this machine, and this process's resident memory."""
    load = psutil.getloadavg()
    memory = psutil.virtual_memory()
    return SystemStats(
        cpu_count=os.cpu_count() or 1,
        load_1m=load[0],
        load_5m=load[1],
        load_15m=load[2],
        memory_total_bytes=memory.total,
        memory_available_bytes=memory.available,
        memory_percent=memory.percent,
        process_rss_bytes=psutil.Process().memory_info().rss,
    )
