"""FastAPI integration: one manager per app, and an HTTP API over its runs.

Needs the ``fastapi`` extra (``pip install 'runtrack[fastapi]'``); ``import runtrack``
never imports this module.

- `lifespan` owns one `BackgroundTaskManager` for the app: started at startup, shut down
  gracefully at shutdown, composable with the app's own lifespan.
- `get_task_manager` (or the `TaskManager` annotation) is the dependency handlers use.
- `runs_router` serves the runs over HTTP: list, read, output, cancel, health, metrics and
  a server-sent-events stream of status changes (which ends when the app stops), with
  JSON errors ``{"error": ..., "code": ...}``. Times are written the same way everywhere,
  the stream included: pydantic's JSON, UTC ending in ``Z``.
"""

# The implementation lives in private modules, one concept each: _api_lifespan (the manager
# and the dependency), _api_errors (the JSON errors), and one module per group of routes.
# The constants imported "as" themselves are not in __all__, yet importable from here as
# they have always been.

from collections.abc import Sequence

from fastapi import APIRouter, Depends, params

from runtrack._api_errors import ApiRoute, ErrorResponse
from runtrack._api_events import EVENT_BUFFER as EVENT_BUFFER  # noqa: PLC0414
from runtrack._api_events import add_events_route
from runtrack._api_health import HEALTH_TIMEOUT as HEALTH_TIMEOUT  # noqa: PLC0414
from runtrack._api_health import HealthReport, add_health_routes
from runtrack._api_lifespan import STATE_KEY as STATE_KEY  # noqa: PLC0414
from runtrack._api_lifespan import AppLifespan as AppLifespan  # noqa: PLC0414
from runtrack._api_lifespan import TaskManager, get_task_manager, lifespan
from runtrack._api_managers import add_managers_route
from runtrack._api_requeue import add_requeue_route
from runtrack._api_runs import RunList, RunOutput, add_runs_routes
from runtrack._dashboard import add_dashboard_routes

__all__ = [
    "ErrorResponse",
    "HealthReport",
    "RunList",
    "RunOutput",
    "TaskManager",
    "get_task_manager",
    "lifespan",
    "runs_router",
]


def runs_router(
    *,
    dependencies: Sequence[params.Depends] | None = None,
    prefix: str = "",
    tags: Sequence[str] = ("runs",),
    expose_errors: bool = False,
    dashboard: bool = False,
) -> APIRouter:
    """Build a router that serves the app manager's runs over HTTP.

    | endpoint | serves |
    |---|---|
    | ``GET /runs`` | runs, newest first, filtered and paged (see below) |
    | ``GET /runs/events`` | server-sent events: ``event: run``, data a `RunEvent` as JSON |
    | ``GET /runs/{run_id}`` | one run |
    | ``GET /runs/{run_id}/output`` | its output chunks with ``seq > since`` |
    | ``POST /runs/{run_id}/cancel`` | cancels it; returns the CANCELLED run |
    | ``POST /runs/{run_id}/requeue`` | a new QUEUED run of a finished durable run |
    | ``GET /health`` | ``ok`` (200), or ``degraded`` (503); the machine's load and memory |
    | ``GET /metrics`` | ``manager.stats()`` as JSON |
    | ``GET /managers`` | the managers sharing the registry (`ManagerInfo` list) |
    | ``GET /runs/ui`` | with ``dashboard=True``, a live dashboard of the runs |

    ``GET /runs`` takes ``status`` (repeatable, e.g. ``?status=queued&status=running``),
    ``name``, ``group``, ``tag`` (repeatable ``key:value``), ``dead`` (``true``: only dead
    letters), ``limit`` (1 to 1000, default 100) and ``offset``. Errors are
    ``{"error": message, "code": code}``: 404 ``run_not_found``, 409 ``run_finished``
    (``run_not_finished`` for a requeue), 422 ``invalid_filter`` (or
    ``run_not_durable`` for a requeue), 503 ``registry_unavailable``, 500
    ``internal_error`` (the exception is logged, its message hidden unless
    ``expose_errors``), 501 ``managers_unsupported`` (``GET /managers`` on a registry
    without `ManagerPresence`). The app needs `lifespan`.

    Args:
        dependencies: Run before every endpoint, e.g. ``[Depends(check_api_key)]``.
        prefix: Prepended to every path (so is an ``include_router`` prefix).
        tags: OpenAPI tags of the endpoints.
        expose_errors: Put the exception's type and message in 500 and 503 bodies (for
            development; they may reveal internals).
        dashboard: Also serve a live dashboard of the runs at ``GET /runs/ui`` (a static
            page that reads this API; ``dependencies`` protect it too, so use an auth
            that browsers send by themselves, such as a session cookie or HTTP basic
            auth: a custom header such as ``X-API-Key`` keeps a browser out).

    Returns:
        A router for ``app.include_router``.

    Example:
        >>> import asyncio
        >>> import httpx
        >>> from fastapi import FastAPI
        >>> from runtrack.fastapi import lifespan, runs_router
        >>> app = FastAPI(lifespan=lifespan())
        >>> app.include_router(runs_router(), prefix="/api")
        >>> async def main() -> object:
        ...     transport = httpx.ASGITransport(app=app)
        ...     async with app.router.lifespan_context(app), httpx.AsyncClient(
        ...         transport=transport, base_url="http://app"
        ...     ) as client:
        ...         return (await client.get("/api/runs/nope")).json()
        >>> asyncio.run(main())
        {'error': "no run 'nope'", 'code': 'run_not_found'}
    """

    class RunsRoute(ApiRoute):
        pass

    RunsRoute.expose_errors = expose_errors
    router = APIRouter(
        prefix=prefix,
        tags=list(tags),
        dependencies=list(dependencies or ()),
        route_class=RunsRoute,
    )
    manager_dependency = Depends(get_task_manager)
    # Declared before /runs/{run_id}, which would take "ui" or "events" for a run id.
    if dashboard:
        add_dashboard_routes(router)
    add_events_route(router, manager_dependency)
    add_runs_routes(router, manager_dependency)
    add_health_routes(router, manager_dependency)
    add_managers_route(router, manager_dependency)
    add_requeue_route(router, manager_dependency)
    return router
