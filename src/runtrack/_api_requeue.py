"""``POST /runs/{run_id}/requeue``: run a finished durable run again (see `runs_router`).

Kept out of ``runtrack.fastapi`` so that module stays small; `add_requeue_route` is called
by ``runs_router`` with the router's own manager dependency and error responses. No
``from __future__ import annotations`` here: FastAPI reads the route's annotations, which
name the dependency it was given.
"""

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, params
from fastapi.responses import JSONResponse

from runtrack._manager import BackgroundTaskManager
from runtrack._models import Run

__all__ = ["NOT_DURABLE", "NOT_FINISHED", "add_requeue_route"]

#: The error ``code`` of a 409: the run is still queued or running.
NOT_FINISHED: Final = "run_not_finished"
#: The error ``code`` of a 422: the run is not a run of a durable task.
NOT_DURABLE: Final = "run_not_durable"


def _error(status_code: int, code: str, message: str) -> Run:
    """The error body, as a route declared to return a `Run` returns it (sent as it is)."""
    body = {"error": message, "code": code}
    return JSONResponse(body, status_code=status_code)  # type: ignore[return-value]


def add_requeue_route(
    router: APIRouter,
    manager_dependency: params.Depends,
    responses: dict[int | str, dict[str, Any]],
) -> None:
    """Serve ``POST /runs/{run_id}/requeue`` from ``router``.

    Args:
        router: The runs router (its prefix and dependencies apply).
        manager_dependency: ``Depends(get_task_manager)``: the app's manager.
        responses: The OpenAPI error responses of the route (404, 409, 422, 503).
    """

    @router.post("/runs/{run_id}/requeue", responses=responses, summary="Requeue a run")
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
        run = await manager.registry.get_run(run_id)
        if run is None:
            return _error(404, "run_not_found", f"no run {run_id[:200]!r}")
        if run.task is None:
            return _error(
                422,
                NOT_DURABLE,
                f"run {run_id[:200]!r} is not a run of a durable task: only runs of "
                "@manager.task functions can be requeued; submit the work again",
            )
        if not run.status.is_terminal:
            return _error(
                409,
                NOT_FINISHED,
                f"run {run_id[:200]!r} is {run.status.value}: only finished runs can be "
                "requeued; wait for it to finish or cancel it first",
            )
        return await manager.requeue(run_id, delay=delay)
