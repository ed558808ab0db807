"""The runs themselves over HTTP: list, read, output and cancel (see ``runs_router``).

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations,
which name the dependency they were given.
"""

from typing import Annotated

from fastapi import APIRouter, Query, params
from pydantic import BaseModel, Field

from runtrack._api_errors import ApiError, error_responses, run_or_404
from runtrack._manager import BackgroundTaskManager
from runtrack._models import OutputChunk, Run
from runtrack._status import RunStatus

__all__ = ["RunList", "RunOutput", "add_runs_routes"]


class RunList(BaseModel):
    """A page of runs, newest first."""

    runs: list[Run]
    limit: int
    offset: int
    count: int = Field(description="Runs on this page.")
    next_offset: int | None = Field(description="The offset of the next page; None if last.")


class RunOutput(BaseModel):
    """Output chunks of a run, oldest first."""

    run_id: str
    chunks: list[OutputChunk]
    next_since: int = Field(description="Pass as ``since`` to get the chunks after these.")


def _parse_tags(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    tags: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ApiError(422, "invalid_filter", f"tag: expected key:value, got {item[:100]!r}")
        if tags.get(key, value) != value:
            raise ApiError(422, "invalid_filter", f"tag: key {key[:100]!r} given twice")
        tags[key] = value
    return tags


def add_runs_routes(router: APIRouter, manager_dependency: params.Depends) -> None:
    """Serve ``GET /runs``, ``GET /runs/{run_id}``, its output and its cancel from ``router``.

    Args:
        router: The runs router (its prefix and dependencies apply).
        manager_dependency: ``Depends(get_task_manager)``: the app's manager.
    """
    TaskManager = Annotated[BackgroundTaskManager, manager_dependency]

    @router.get("/runs", responses=error_responses(503), summary="List runs")
    async def list_runs(
        manager: TaskManager,
        status: Annotated[
            list[RunStatus] | None, Query(description="Only these statuses (repeatable).")
        ] = None,
        name: Annotated[str | None, Query(description="Only runs of this name.")] = None,
        group: Annotated[str | None, Query(description="Only runs of this group.")] = None,
        tag: Annotated[
            list[str] | None,
            Query(description="Only runs with this tag, as key:value (repeatable)."),
        ] = None,
        dead: Annotated[
            bool | None,
            Query(description="Only dead letters (true) or only the other runs (false)."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
        offset: Annotated[int, Query(ge=0, description="Runs to skip.")] = 0,
    ) -> RunList:
        """Runs matching every filter, newest first."""
        tag_filter = _parse_tags(tag)
        # One more than asked tells whether a next page exists.
        runs = await manager.registry.list_runs(
            status=status or None, name=name, group=group, tags=tag_filter, dead=dead,
            limit=limit + 1, offset=offset,
        )  # fmt: skip
        more = len(runs) > limit
        runs = runs[:limit]
        return RunList(
            runs=runs,
            limit=limit,
            offset=offset,
            count=len(runs),
            next_offset=offset + limit if more else None,
        )

    @router.get("/runs/{run_id}", responses=error_responses(404, 503), summary="Get a run")
    async def get_run(manager: TaskManager, run_id: str) -> Run:
        """One run, as the registry records it."""
        return await run_or_404(manager, run_id)

    @router.get("/runs/{run_id}/output", responses=error_responses(404, 503), summary="Get output")
    async def get_run_output(
        manager: TaskManager,
        run_id: str,
        since: Annotated[int, Query(ge=0, description="Only chunks with a higher seq.")] = 0,
        limit: Annotated[
            int | None, Query(ge=1, le=10_000, description="At most this many chunks.")
        ] = None,
    ) -> RunOutput:
        """Output chunks with ``seq > since``, oldest first."""
        chunks = await manager.registry.get_output(run_id, since=since, limit=limit)
        if not chunks:
            await run_or_404(manager, run_id)
        return RunOutput(
            run_id=run_id, chunks=chunks, next_since=chunks[-1].seq if chunks else since
        )

    @router.post(
        "/runs/{run_id}/cancel", responses=error_responses(404, 409, 503), summary="Cancel a run"
    )
    async def cancel_run(manager: TaskManager, run_id: str) -> Run:
        """Cancel a queued or running run (of any manager sharing the registry)."""
        cancelled = await manager.cancel_task(run_id)
        run = await run_or_404(manager, run_id)
        if not cancelled:
            state = f"already {run.status.value}" if run.is_finished else "finishing"
            raise ApiError(409, "run_finished", f"run {run_id[:200]!r} is {state}")
        return run
