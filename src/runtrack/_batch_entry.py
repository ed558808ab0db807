"""`Entry`: every pending write of one run, merged into one (see `BatchWriter`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from runtrack._status import RunStatus

if TYPE_CHECKING:
    from runtrack._admission import Job

__all__ = ["Entry"]


class Entry:
    """Every pending write of one run, merged into one."""

    __slots__ = (
        "changes",
        "confirming",
        "expect",
        "finishing",
        "insert",
        "job",
        "lost",
        "maybe",
        "to",
        "waiters",
    )

    def __init__(self, job: Job | None) -> None:
        self.job = job
        self.insert = False
        self.to: RunStatus | None = None
        self.expect: frozenset[RunStatus] = frozenset()
        self.changes: dict[str, Any] = {}
        self.finishing = False  # holds a terminal write the manager waits to hear about
        self.confirming = False  # a durable run's start waits for it (see `started`)
        self.waiters: list[asyncio.Future[bool]] | None = None  # most entries have none
        # Sent in a batch whose outcome is unknown (the connection broke before the reply):
        # the registry may already hold this status from us.
        self.maybe: RunStatus | None = None
        self.lost = False

    def cas(self, to: RunStatus, expect: frozenset[RunStatus], changes: dict[str, Any]) -> None:
        if self.to is None:
            self.expect = expect  # the first compare-and-set decides where it may apply from
        self.to = to
        self.changes.update(changes)

    def wait_with(self, *futures: asyncio.Future[bool]) -> None:
        """Resolve ``futures`` with this entry's outcome."""
        if self.waiters is None:
            self.waiters = []
        self.waiters.extend(futures)

    def sent_without_answer(self) -> None:
        """The batch carrying this entry failed in flight: it may or may not have applied.

        Retrying must then also apply from the status the lost write may have set (a
        non-terminal one; a terminal one is checked by reading the run back), so a write
        that did land is not mistaken for a conflict.
        """
        self.lost = True
        if self.to is not None:
            self.maybe = self.to
            if not self.to.is_terminal:
                self.expect = self.expect | {self.to}

    def absorb(self, newer: Entry) -> None:
        """Merge a later entry of the same run into this one (this one is applied first)."""
        self.insert = self.insert or newer.insert
        if newer.to is not None:
            self.cas(newer.to, newer.expect, newer.changes)
        else:
            self.changes.update(newer.changes)
        self.job = self.job or newer.job
        self.finishing = self.finishing or newer.finishing
        self.confirming = self.confirming or newer.confirming
        if self.maybe is not None and not self.maybe.is_terminal and self.to is not None:
            self.expect = self.expect | {self.maybe}
        if newer.waiters:
            self.wait_with(*newer.waiters)
