"""New-work announcements that never hold up `TaskFunction.submit` (see `Notifying`).

A submit records its run, then asks for an announcement and returns: the announcement is
sent in the background, and the task names asked for while one is on its way go out
together in the next one, so a burst of submits costs a few announcements, not one round
trip each. A lost announcement costs only latency: idle managers also poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection

from runtrack._logging import Logger

__all__ = ["Announcer"]


class Announcer:
    """Sends the task names given to it with ``send``, coalesced, one send at a time."""

    def __init__(self, send: Callable[[Collection[str]], Awaitable[None]], log: Logger) -> None:
        self._send = send
        self._log = log
        self._pending: dict[str, None] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def __call__(self, tasks: Collection[str]) -> None:
        """Announce ``tasks`` soon; returns at once."""
        self._pending.update(dict.fromkeys(tasks))
        if self._task is None and self._pending:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                names = list(self._pending)
                self._pending.clear()
                try:
                    await self._send(names)
                except Exception as exc:  # the others poll: only latency is lost
                    if not self._failing:
                        self._failing = True
                        self._log.warning(
                            "announce_failed",
                            error=f"{type(exc).__name__}: {exc}",
                            detail="other managers will find the new runs at their next poll",
                        )
                else:
                    if self._failing:
                        self._failing = False
                        self._log.warning("announce_recovered")
        finally:
            self._task = None

    async def aclose(self, timeout: float) -> None:
        """Let the announcement under way finish, for at most ``timeout`` seconds."""
        task = self._task
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
