"""runtrack: fire-and-forget background runs for asyncio services, every one tracked.

Start work with `BackgroundTaskManager.start_task` or `BackgroundTaskManager.submit`; its
status, progress, result or error land in a `RunRegistry` (in memory by default; SQL and
Redis in ``runtrack.registry.sql`` and ``runtrack.registry.redis``) that every replica,
CLI and dashboard can read.
"""

from runtrack._background import (
    BackgroundFunction,
    background,
    get_default_manager,
    set_default_manager,
    task,
)
from runtrack._context import RunHandle, current_run, report_progress
from runtrack._exceptions import (
    CommandFailed,
    CommandNotExecutable,
    CommandNotFound,
    DuplicateRunError,
    ManagerClosedError,
    NoActiveRunError,
    QueueFullError,
    RegistryConfigError,
    RegistryUnavailableError,
    RunNotFoundError,
    RuntrackError,
)
from runtrack._manager import BackgroundTaskManager, Listener
from runtrack._models import OutputChunk, Retry, Run, RunEvent
from runtrack._presence import ManagerInfo
from runtrack._stats import ManagerStats, NameStats
from runtrack._status import TERMINAL, RunStatus
from runtrack._sync import SyncTaskManager
from runtrack._system import SystemStats, system_stats
from runtrack._tasks import TaskFunction
from runtrack.registry import (
    InMemoryRunRegistry,
    OutputTrimming,
    RunRegistry,
    TaskClaiming,
    registry_from_url,
)

__all__ = [
    "TERMINAL",
    "BackgroundFunction",
    "BackgroundTaskManager",
    "CommandFailed",
    "CommandNotExecutable",
    "CommandNotFound",
    "DuplicateRunError",
    "InMemoryRunRegistry",
    "Listener",
    "ManagerClosedError",
    "ManagerInfo",
    "ManagerStats",
    "NameStats",
    "NoActiveRunError",
    "OutputChunk",
    "OutputTrimming",
    "QueueFullError",
    "RegistryConfigError",
    "RegistryUnavailableError",
    "Retry",
    "Run",
    "RunEvent",
    "RunHandle",
    "RunNotFoundError",
    "RunRegistry",
    "RunStatus",
    "RuntrackError",
    "SyncTaskManager",
    "SystemStats",
    "TaskClaiming",
    "TaskFunction",
    "background",
    "current_run",
    "get_default_manager",
    "registry_from_url",
    "report_progress",
    "set_default_manager",
    "system_stats",
    "task",
]

__version__ = "0.1.0.dev0"
