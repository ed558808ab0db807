"""A report service on runtrack: start a report, poll it, cancel it, watch it on the dashboard.

    pip install 'runtrack[fastapi,sql]'
    python examples/fastapi_app.py

then open http://127.0.0.1:8000/runs/ui and, in another terminal::

    curl -X POST localhost:8000/reports -H 'content-type: application/json' \\
         -d '{"customer": "acme", "period": "2025-Q1"}'
    curl localhost:8000/reports/<run_id>
    curl -X POST localhost:8000/reports/<run_id>/cancel

Runs are recorded in SQLite (``./runtrack-example.db``); set ``RUNTRACK_REGISTRY_URL`` to use
another registry, e.g. ``postgresql+asyncpg://app@db/app`` shared by several replicas.
Ctrl-C stops the server at once, dashboard open or not (reports still running get the
manager's shutdown grace, then are recorded cancelled).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, Field

import runtrack
from runtrack import Run, RunStatus
from runtrack.fastapi import TaskManager, lifespan, runs_router

REGISTRY_URL: Final = os.environ.get(
    "RUNTRACK_REGISTRY_URL", "sqlite+aiosqlite:///runtrack-example.db"
)
REPORT: Final = "report"
SECTIONS: Final = ("summary", "revenue", "customers", "churn", "forecast")


class ReportRequest(BaseModel):
    """What to build a report for."""

    customer: str = Field(min_length=1, max_length=100, examples=["acme"])
    period: str = Field(default="2025-Q1", pattern=r"^\d{4}-Q[1-4]$")
    seconds_per_section: float = Field(
        default=2.0, ge=0, le=60, description="How slow the fake work is."
    )


class ReportAccepted(BaseModel):
    """The answer to POST /reports: where to poll."""

    run_id: str
    status_url: str


class ReportStatus(BaseModel):
    """A report's state, read from the registry (so any replica can answer)."""

    run_id: str
    status: RunStatus
    progress: float | None = None
    step: str | None = None
    report: dict[str, Any] | None = None
    error: str | None = None


@runtrack.background(name=REPORT, group="reports", timeout=600)
async def generate_report(customer: str, period: str, seconds_per_section: float) -> dict[str, Any]:
    """Build the report section by section, reporting progress and writing a log."""
    run = runtrack.current_run()
    for done, section in enumerate(SECTIONS, start=1):
        await run.write_output(f"building {section} for {customer} {period}\n")
        await asyncio.sleep(seconds_per_section)  # stands in for queries and rendering
        await runtrack.report_progress(done / len(SECTIONS), f"{section} ({done}/{len(SECTIONS)})")
    await run.write_output("done\n")
    return {"customer": customer, "period": period, "file": f"reports/{customer}-{period}.pdf"}


def to_status(run: Run) -> ReportStatus:
    error = f"{run.error_type}: {run.error_message}" if run.status is RunStatus.FAILED else None
    return ReportStatus(
        run_id=run.run_id,
        status=run.status,
        progress=run.progress,
        step=run.progress_message,
        report=run.result if isinstance(run.result, dict) else None,
        error=error,
    )


def create_app(registry_url: str = REGISTRY_URL) -> FastAPI:
    """The service: its own endpoints, plus runtrack's runs API and dashboard."""
    app = FastAPI(title="Reports", lifespan=lifespan(registry_url, max_concurrency=4))
    app.include_router(runs_router(dashboard=True))

    async def get_report(manager: TaskManager, run_id: str) -> Run | None:
        run = await manager.registry.get_run(run_id)
        if run is not None and run.name != REPORT:
            return None  # /reports is not a back door to every run of the service
        return run

    @app.post("/reports", status_code=202)
    async def start_report(request: ReportRequest, response: Response) -> ReportAccepted:
        run_id = generate_report(request.customer, request.period, request.seconds_per_section)
        response.headers["Location"] = f"/reports/{run_id}"
        return ReportAccepted(run_id=run_id, status_url=f"/reports/{run_id}")

    @app.get("/reports/{run_id}")
    async def report_status(manager: TaskManager, run_id: str) -> ReportStatus:
        run = await get_report(manager, run_id)
        if run is not None:
            return to_status(run)
        if manager.is_task_active(run_id):
            # Started a moment ago: the background decorator records the run asynchronously.
            return ReportStatus(run_id=run_id, status=RunStatus.QUEUED)
        raise HTTPException(404, f"no report {run_id!r}")

    @app.post("/reports/{run_id}/cancel")
    async def cancel_report(manager: TaskManager, run_id: str) -> ReportStatus:
        run = await get_report(manager, run_id)
        if run is None and not manager.is_task_active(run_id):
            raise HTTPException(404, f"no report {run_id!r}")
        if not await manager.cancel_task(run_id):
            raise HTTPException(409, f"report {run_id!r} has already finished")
        cancelled = await get_report(manager, run_id)
        if cancelled is None:  # cancelled before its QUEUED record was even written
            return ReportStatus(run_id=run_id, status=RunStatus.CANCELLED)
        return to_status(cancelled)

    return app


app = create_app()

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
