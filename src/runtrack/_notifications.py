"""Pushed cancels and new-work announcements for one manager (see `Notifying`).

On a registry that pushes (PostgreSQL, Redis), the manager's `Presence` listens from its
start to its shutdown: a cancel of one of its runs by another process stops that run's
coroutine at once, instead of at the next poll. Polling goes on every ``poll_interval``
all the same, and makes up a notification lost while the listener's connection was cut
(the listener opens a new one with a growing delay, logged once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtrack._logging import Logger
    from runtrack.registry.base import NotificationListener, Notifying

__all__ = ["Notifications"]


class Notifications:
    """The listener of one manager: cancels go to ``on_cancel``, work to ``on_new_work``."""

    def __init__(
        self,
        registry: Notifying,
        owner: str,
        *,
        on_cancel: Callable[[list[str]], None],
        on_new_work: Callable[[str], None],
        log: Logger,
    ) -> None:
        self._registry = registry
        self._owner = owner
        self._on_cancel = on_cancel
        self._on_new_work = on_new_work
        self._log = log
        self._listener: NotificationListener | None = None
        self._starting: asyncio.Future[None] | None = None
        self._closed = False

    def start_soon(self) -> None:
        """Begin listening in the background: a registry slow to answer holds no heartbeat."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self.start())

    async def start(self) -> None:
        """Listen (the registry retries a lost connection itself); log a refusal once."""
        try:
            listener = await self._registry.listen(
                self._owner, on_cancel=self._cancelled, on_new_work=self._new_work
            )
        except Exception as exc:  # polling remains
            self._log.warning(
                "notifications_failed",
                error=f"{type(exc).__name__}: {exc}",
                detail="cancels are learned by polling every poll_interval",
            )
            return
        if self._closed:  # shut down while listening began
            await listener.aclose()
            return
        self._listener = listener

    async def aclose(self) -> None:
        """Stop listening. Safe to call twice."""
        self._closed = True
        starting = self._starting
        if starting is not None and not starting.done():
            # It closes what it opens once it sees us closed, if we stop waiting first.
            with contextlib.suppress(Exception):
                await asyncio.shield(starting)
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(listener.aclose())

    def _cancelled(self, run_id: str) -> None:
        self._on_cancel([run_id])

    def _new_work(self, task: str) -> None:
        try:
            self._on_new_work(task)
        except Exception:  # a hook's bug must not end the listener
            self._log.exception("new_work_hook_failed", task=task)
