"""``POST /runs/{run_id}/requeue``: run a finished durable run again (see `runs_router`).

Kept out of ``runtrack.fastapi`` so that module stays small; `add_requeue_route` is called
by ``runs_router`` with the router's own manager dependency. No ``from __future__ import
annotations`` here: FastAPI reads the route's annotations, which name the dependency it was
given.
"""

from typing import Annotated, Final

from fastapi import APIRouter, Query, params

from runtrack._api_errors import ApiError, error_responses, run_or_404
from runtrack._manager import BackgroundTaskManager
from runtrack._models import Run

__all__ = ["NOT_DURABLE", "NOT_FINISHED", "add_requeue_route"]

#: The error ``code`` of a 409: the run is still queued or running.
NOT_FINISHED: Final = "run_not_finished"
#: The error ``code`` of a 422: the run is not a run of a durable task.
NOT_DURABLE: Final = "run_not_durable"


def add_requeue_route(router: APIRouter, manager_dependency: params.Depends) -> None:
    """Serve ``POST /runs/{run_id}/requeue`` from ``router``.

    Args:
        router: The runs router (its prefix and dependencies apply).
        manager_dependency: ``Depends(get_task_manager)``: the app's manager.
    """

    @router.post(
        "/runs/{run_id}/requeue", responses=error_responses(404, 409, 503), summary="Requeue a run"
    )
    async def requeue_run(
        manager: Annotated[BackgroundTaskManager, manager_dependency],
        run_id: str,
        delay: Annotated[
            float | None, Query(ge=0, description="Seconds before the new run may start.")
        ] = None,
    ) -> Run:
        """Record a new QUEUED run of the same task and arguments as a finished durable run.

        The new run has ``requeued_from`` set to ``run_id`` and no owner: any manager that
        registered the task runs it; with ``delay``, it is recorded at once with
        ``not_before`` set and starts no sooner. 404 ``run_not_found``, 409 ``run_not_finished`` (it
        is still queued or running), 422 ``run_not_durable`` (a local run, whose code only
        its own manager had).
        """
        run = await run_or_404(manager, run_id)
        if run.task is None:
            raise ApiError(
                422,
                NOT_DURABLE,
                f"run {run_id[:200]!r} is not a run of a durable task: only runs of "
                "@manager.task functions can be requeued; submit the work again",
            )
        if not run.status.is_terminal:
            raise ApiError(
                409,
                NOT_FINISHED,
                f"run {run_id[:200]!r} is {run.status.value}: only finished runs can be "
                "requeued; wait for it to finish or cancel it first",
            )
        return await manager.requeue(run_id, delay=delay)
