"""`TaskClaiming`: the registry side of durable tasks, which any replica may run.

A durable run is recorded QUEUED with ``task`` set and no ``owner`` (unclaimed). A manager
that registered the task claims a batch of them atomically (exactly one claimer per run),
becoming their ``owner``: the claim records them RUNNING (so a claimed run's start costs
no write of its own, and no two managers can start it), and the manager runs them through
its normal execution path. At shutdown it gives back (``release_runs``) the runs it
claimed but did not start. A run with a ``not_before`` time is not claimed before it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

from runtrack._models import Run

__all__ = ["TaskClaiming"]


@runtime_checkable
class TaskClaiming(Protocol):
    """**Protocol:** a registry whose durable runs any manager may claim and run.

    Implemented by `InMemoryRunRegistry`, `SQLRunRegistry` (PostgreSQL and MariaDB with
    ``FOR UPDATE SKIP LOCKED``, SQLite in one ``BEGIN IMMEDIATE`` transaction) and
    `RedisRunRegistry` (one Lua script per call).
    """

    async def add_runs(self, runs: Sequence[Run]) -> None:
        """Record new runs in one round trip (a multi-row insert, one script).

        All or nothing: if one id exists already, none is recorded.

        Raises:
            DuplicateRunError: a run with one of these ids exists.
        """
        ...

    async def claim_runs(self, owner: str, tasks: Collection[str], limit: int) -> list[Run]:
        """Atomically take up to ``limit`` unclaimed QUEUED runs of these tasks.

        Highest ``priority`` first, then oldest (``created_at``); each run taken is
        recorded RUNNING with ``owner``, and ``started_at`` and ``heartbeat_at`` set to now
        (this process's clock; its ``not_before`` if that is later), and is returned as
        stored afterwards. Two callers never
        get the same run.
        A run whose ``not_before`` is later than now is left alone (now by the registry's
        own clock where it has one: the database server's, Redis's ``TIME``).
        """
        ...

    async def release_runs(self, owner: str, run_ids: Sequence[str]) -> int:
        """Give back claimed runs that did not start; returns how many were given back.

        Those of ``run_ids`` still owned by ``owner`` and QUEUED, or RUNNING since their
        claim, become unclaimed QUEUED runs again (``started_at`` and ``heartbeat_at``
        cleared for the RUNNING ones), their ``not_before`` kept. The caller names only
        runs whose code did not start.
        """
        ...
