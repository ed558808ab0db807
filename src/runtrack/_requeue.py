"""Requeueing a finished durable run: `BackgroundTaskManager.requeue` and ``runtrack requeue``.

A requeue records a new QUEUED run of the same task, arguments and options, with
``requeued_from`` naming the old run and no owner: any manager that registered the task
claims it, as it claims a run of ``fn.submit``. The old run is left as it is (a dead
letter stays a dead letter: ``list_runs(dead=True)`` still finds it).
"""

from __future__ import annotations

import asyncio

from runtrack._exceptions import RunNotFoundError
from runtrack._logging import Logger
from runtrack._models import Run, new_run_id
from runtrack._status import RunStatus
from runtrack.registry.base import RunRegistry

__all__ = ["check_requeueable", "record_later", "requeue_run", "requeued"]


def check_requeueable(run: Run) -> None:
    """A `ValueError` saying why ``run`` may not be requeued, if it may not.

    Only a finished run of a durable task may: a local run's code lives in the process
    that started it, and an active run would then run twice.
    """
    if run.task is None:
        raise ValueError(
            f"run {run.run_id!r} is not a run of a durable task (its code lives only in the "
            f"manager that started it): only runs of @manager.task functions can be "
            f"requeued; submit the work again instead"
        )
    if not run.status.is_terminal:
        raise ValueError(
            f"run {run.run_id!r} is {run.status.value}: only finished runs can be requeued; "
            f"wait for it to finish (or cancel it) first"
        )


def _check_delay(delay: float | None) -> None:
    if delay is not None and (isinstance(delay, bool) or not delay >= 0):
        raise ValueError(f"delay must be None or >= 0 seconds, got {delay!r}")


async def requeued(registry: RunRegistry, run_id: str, delay: float | None = None) -> Run:
    """The new run that requeueing the finished durable run ``run_id`` records.

    Raises:
        RunNotFoundError: no run ``run_id``.
        ValueError: the run is not finished, or not a run of a durable task; a bad delay.
    """
    _check_delay(delay)
    old = await registry.get_run(run_id)
    if old is None:
        raise RunNotFoundError(run_id)
    check_requeueable(old)
    return Run(
        run_id=new_run_id(),
        name=old.name,
        status=RunStatus.QUEUED,
        parameters=old.parameters,
        tags=old.tags,
        group=old.group,
        priority=old.priority,
        timeout=old.timeout,
        max_attempts=old.max_attempts,
        task=old.task,
        args=old.args,
        requeued_from=old.run_id,
        requeue_on_interrupt=old.requeue_on_interrupt,
    )


async def requeue_run(registry: RunRegistry, run_id: str) -> Run:
    """Record a new QUEUED run of the same task and arguments as the finished run ``run_id``.

    Returns:
        The new run, as recorded.

    Raises:
        RunNotFoundError: no run ``run_id``.
        ValueError: the run is not finished, or not a run of a durable task.
    """
    new = await requeued(registry, run_id)
    await registry.add_run(new)
    return new


async def record_later(registry: RunRegistry, run: Run, delay: float, log: Logger) -> None:
    """Record ``run`` after ``delay`` seconds (a requeue with a delay), unless stopped first.

    The registry has no "not before" time for a QUEUED run: the delay is kept by the
    process that requeued, and is lost (logged ``requeue_dropped``) if it stops first.
    """
    try:
        await asyncio.sleep(delay)
    except asyncio.CancelledError:
        log.warning(
            "requeue_dropped", run_id=run.run_id, requeued_from=run.requeued_from,
            detail="the manager stopped before the requeue's delay was over: requeue again",
        )  # fmt: skip
        raise
    try:
        await registry.add_run(run)
    except Exception as exc:
        log.error(
            "requeue_failed", run_id=run.run_id, requeued_from=run.requeued_from, exc_info=exc
        )
