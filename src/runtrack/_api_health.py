"""``GET /health`` and ``GET /metrics``: how the app's manager is doing (see ``runs_router``).

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations,
which name the dependency they were given.
"""

import asyncio
import contextlib
import time
from typing import Annotated, Final, Literal

from fastapi import APIRouter, Response, params
from pydantic import BaseModel, Field

from runtrack._api_errors import error_responses
from runtrack._exceptions import RegistryUnavailableError, RuntrackError
from runtrack._logging import get_logger
from runtrack._manager import BackgroundTaskManager
from runtrack._stats import ManagerStats
from runtrack._system import SystemStats, system_stats

__all__ = ["HEALTH_TIMEOUT", "HealthReport", "add_health_routes"]

#: Seconds /health waits for the registry before reporting it unavailable.
HEALTH_TIMEOUT: Final = 2.0

_log = get_logger()


class HealthReport(BaseModel):
    """Whether the manager runs and the registry answers."""

    status: Literal["ok", "degraded"]
    manager: str = Field(description="The manager's state: created, running, closing, closed.")
    owner: str
    registry: Literal["ok", "unavailable"]
    registry_latency_ms: float | None = Field(description="How long the registry took.")
    active_runs: int = Field(description="Runs queued or running in this manager.")
    system: SystemStats = Field(description="Load and memory of the machine the manager runs on.")


def add_health_routes(router: APIRouter, manager_dependency: params.Depends) -> None:
    """Serve ``GET /health`` and ``GET /metrics`` from ``router``.

    Args:
        router: The runs router (its prefix and dependencies apply).
        manager_dependency: ``Depends(get_task_manager)``: the app's manager.
    """

    @router.get(
        "/health",
        responses={**error_responses(), 503: {"model": HealthReport, "description": "Degraded."}},
        summary="Health",
    )
    async def health(
        manager: Annotated[BackgroundTaskManager, manager_dependency], response: Response
    ) -> HealthReport:
        """``ok`` while the manager runs and the registry answers; else ``degraded`` (503)."""
        started = time.perf_counter()
        latency: float | None = None
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await manager.registry.get_run("runtrack-health-check")
            latency = round((time.perf_counter() - started) * 1000, 3)
        except (TimeoutError, RegistryUnavailableError) as exc:
            _log.warning("health_registry_unavailable", error=repr(exc))
        except Exception as exc:
            _log.error("health_registry_failed", exc_info=exc)
        stats = manager.stats()
        ok = latency is not None and stats.state == "running"
        if not ok:
            response.status_code = 503
        return HealthReport(
            status="ok" if ok else "degraded",
            manager=stats.state,
            owner=stats.owner,
            registry="ok" if latency is not None else "unavailable",
            registry_latency_ms=latency,
            active_runs=manager.get_active_task_count(),
            system=system_stats(),
        )

    @router.get("/metrics", responses=error_responses(), summary="Metrics")
    async def metrics(
        manager: Annotated[BackgroundTaskManager, manager_dependency],
    ) -> ManagerStats:
        """Counts by status, limits and per-name outcomes of this manager.

        ``queue_depth`` is read from the registry for the answer (QUEUED runs of every
        manager, by priority); if it cannot be, the figure last read is given.
        """
        with contextlib.suppress(RuntrackError):
            await manager.queue_depth()
        return manager.stats()
