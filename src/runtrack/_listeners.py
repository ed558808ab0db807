"""Listeners: the callbacks told of every status change (alerts, metrics, dashboards)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from runtrack._admission import Job, describe_error
from runtrack._models import RunEvent, utcnow

if TYPE_CHECKING:
    from runtrack._logging import Logger
    from runtrack._status import RunStatus

__all__ = ["Listener", "Listeners"]

Listener = Callable[[RunEvent], object]
"""A status-change callback: a plain function, or an async one (run as a tracked task)."""


class Listeners:
    """A manager's listeners; a failing one is logged, never raised, never stops a run."""

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, None]], None], log: Logger) -> None:
        #: The callbacks; the manager tests this list's truth before building an event.
        self.callbacks: list[Listener] = []
        self._spawn = spawn
        self._log = log

    def add(self, callback: Listener) -> None:
        """Call ``callback(event)`` on every status change."""
        if not callable(callback):
            raise TypeError(f"add_listener() takes a callable, got {type(callback).__name__}")
        self.callbacks.append(callback)

    def remove(self, callback: Listener) -> None:
        """Stop calling ``callback``."""
        self.callbacks.remove(callback)

    def emit(
        self,
        job: Job,
        status: RunStatus,
        previous: RunStatus | None,
        *,
        error: BaseException | None = None,
        duration: float | None = None,
    ) -> None:
        """Tell the listeners that ``job`` went from ``previous`` to ``status``."""
        if not self.callbacks:
            return
        event = RunEvent(
            run_id=job.run_id,
            name=job.name,
            status=status,
            previous=previous,
            at=utcnow(),
            attempt=job.attempt,
            group=job.group,
            error_type=None if error is None else type(error).__name__,
            error_message=None if error is None else describe_error(error, job),
            duration=duration,
        )
        self.dispatch(event)

    def dispatch(self, event: RunEvent) -> None:
        """Call every listener with ``event``; an async one runs as a background task."""
        for callback in list(self.callbacks):
            try:
                outcome = callback(event)
                if inspect.isawaitable(outcome):
                    self._spawn(self._guard(outcome))
            except Exception as exc:
                self._log.error("listener_failed", run_id=event.run_id, exc_info=exc)

    async def _guard(self, outcome: Awaitable[object]) -> None:
        try:
            await outcome
        except Exception as exc:
            self._log.error("listener_failed", exc_info=exc)
