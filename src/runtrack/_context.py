"""What code inside a run can ask: `current_run()` and `report_progress()`."""

from __future__ import annotations

import math
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from runtrack._exceptions import NoActiveRunError
from runtrack._storable import storable_text
from runtrack._uncut import uncut

if TYPE_CHECKING:
    from runtrack._admission import Job
    from runtrack._manager import BackgroundTaskManager

__all__ = ["RunHandle", "current_run", "report_progress"]


class RunHandle:
    """The run being executed, as seen from inside it (see `current_run`)."""

    __slots__ = ("_job", "_manager")

    def __init__(self, manager: BackgroundTaskManager, job: Job) -> None:
        self._manager = manager
        self._job = job

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} name={self.name!r} attempt={self.attempt}>"

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._job.run_id

    @property
    def name(self) -> str:
        """The run's name."""
        return self._job.name

    @property
    def attempt(self) -> int:
        """The attempt being executed, from 1."""
        return self._job.attempt

    @property
    def max_attempts(self) -> int:
        """How many attempts the run may have in all."""
        return self._job.max_attempts

    @property
    def parameters(self) -> dict[str, Any]:
        """The run's JSON parameters."""
        return dict(self._job.parameters or {})

    @property
    def manager(self) -> BackgroundTaskManager:
        """The manager executing the run."""
        return self._manager

    async def report_progress(self, fraction: float, message: str | None = None) -> None:
        """Record how far the run has got (see `report_progress`)."""
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise TypeError(f"progress must be a number from 0 to 1, got {fraction!r}")
        if math.isnan(fraction) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be between 0 and 1, got {fraction!r}")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"progress message must be a str or None, got {message!r}")
        await self._manager._record_progress(self._job, float(fraction), message)

    async def write_output(self, text: str, stream: str = "stdout") -> None:
        """Append text to the run's output (readable with ``registry.get_output``)."""
        if not isinstance(text, str):
            raise TypeError(f"output text must be a str, got {type(text).__name__}")
        await self._manager._writer.recorded(self._job)  # its insert may still be on the way
        text = storable_text(text, sys.maxsize)
        # Finished even if the run is cancelled meanwhile: a database write cut in the middle
        # would leave its connection (and SQLite's write lock) to the garbage collector.
        await uncut(self._manager.registry.append_output(self._job.run_id, [(stream, text)]))


#: The (manager, job) executing in this context; the handle is built only when asked for.
_current: ContextVar[tuple[BackgroundTaskManager, Job] | None] = ContextVar(
    "runtrack_current_run", default=None
)


def current_run() -> RunHandle:
    """Return the handle of the run executing in this context.

    Raises:
        NoActiveRunError: called outside code started by a `BackgroundTaskManager`.

    Example:
        >>> from runtrack import current_run
        >>> async def export() -> str:
        ...     return current_run().run_id
    """
    current = _current.get()
    if current is None:
        raise NoActiveRunError
    return RunHandle(*current)


async def report_progress(fraction: float, message: str | None = None) -> None:
    """Record the current run's progress: a fraction from 0 to 1 and an optional message.

    Raises:
        NoActiveRunError: called outside a run.
        ValueError: ``fraction`` is outside 0..1.

    Example:
        >>> from runtrack import report_progress
        >>> async def export(rows: list[int]) -> None:
        ...     for i, _row in enumerate(rows, start=1):
        ...         await report_progress(i / len(rows), f"row {i}")
    """
    await current_run().report_progress(fraction, message)
