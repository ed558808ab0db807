"""Requeueing a finished durable run: `BackgroundTaskManager.requeue` and ``runtrack requeue``.

A requeue records a new QUEUED run of the same task, arguments and options, with
``requeued_from`` naming the old run and no owner: any manager that registered the task
claims it, as it claims a run of ``fn.submit``. The old run is left as it is (a dead
letter stays a dead letter: ``list_runs(dead=True)`` still finds it). A delay is recorded
with the new run (its ``not_before``, see `delay_until`): the registry holds it, so it
outlives the process that requeued.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta

from runtrack._exceptions import RunNotFoundError
from runtrack._models import Run, new_run_id, utcnow
from runtrack._status import RunStatus
from runtrack.registry.base import RunRegistry

__all__ = ["check_requeueable", "delay_until", "requeue_run", "requeued"]

_DELAY_HINT = "pass None, a number of seconds >= 0 (an int or a float) or a timedelta >= 0"


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


def delay_until(delay: float | timedelta | None) -> datetime | None:
    """The ``not_before`` of a durable run recorded now with ``delay``; None: no delay.

    A delay of 0 is none.

    Raises:
        TypeError: ``delay`` is neither a number nor a `timedelta`.
        ValueError: ``delay`` is a bool, negative, NaN, infinite, or past year 9999.
    """
    given: object = delay  # checked whatever its annotation says
    if given is None:
        return None
    if isinstance(given, timedelta):
        seconds = given.total_seconds()
    elif isinstance(given, bool) or not isinstance(given, numbers.Real):
        error = ValueError if isinstance(given, bool) else TypeError
        raise error(f"delay: {_DELAY_HINT}, got {delay!r}")
    else:
        seconds = float(given)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"delay: {_DELAY_HINT}, got {delay!r}")
    if not seconds:
        return None
    try:
        return utcnow() + timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"delay {delay!r} ends after the year 9999: {_DELAY_HINT}") from None


async def requeued(
    registry: RunRegistry, run_id: str, delay: float | timedelta | None = None
) -> Run:
    """The new run that requeueing the finished durable run ``run_id`` records.

    Raises:
        RunNotFoundError: no run ``run_id``.
        ValueError: the run is not finished, or not a run of a durable task; a bad delay.
        TypeError: a delay that is neither a number nor a `timedelta`.
    """
    not_before = delay_until(delay)
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
        not_before=not_before,
    )


async def requeue_run(
    registry: RunRegistry,
    run_id: str,
    delay: float | timedelta | None = None,
    *,
    wake_at: Callable[[datetime], None] | None = None,
    announce: Callable[[Collection[str]], Awaitable[None]] | None = None,
) -> Run:
    """Record a new QUEUED run of the same task and arguments as the finished run ``run_id``.

    Args:
        registry: Where both runs are.
        run_id: The finished run of a durable task.
        delay: Seconds (or a `timedelta`) before the new run may be claimed: recorded as
            its ``not_before``.
        wake_at: Called with the time the new run may be claimed from, once it is
            recorded (the manager's claim loop: it may run the task).
        announce: Called with the task's name once a run claimable at once is recorded,
            to tell the other managers (NOTIFY, PUBLISH); a delayed one they find by
            their poll.

    Returns:
        The new run, as recorded.

    Raises:
        RunNotFoundError: no run ``run_id``.
        ValueError: the run is not finished, or not a run of a durable task; a bad delay.
        TypeError: a delay that is neither a number nor a `timedelta`.
    """
    new = await requeued(registry, run_id, delay)
    await registry.add_run(new)
    if wake_at is not None:
        wake_at(new.not_before or new.created_at)
    if announce is not None and new.not_before is None and new.task is not None:
        await announce([new.task])
    return new
