"""``runtrack serve``: the runs API and the dashboard over the registry, with uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import click

from runtrack.cli._app import CliState, run_async, state_of
from runtrack.registry import RunRegistry

__all__ = ["build_app", "serve_command"]


def build_app(registry: RunRegistry) -> Any:
    """A FastAPI app serving the runs of ``registry``: ``/runs``, ``/runs/ui``, ``/health``.

    The app owns ``registry`` (closed when the app stops) and one manager over it;
    ``/`` redirects to the dashboard.
    """
    # Imported here: FastAPI takes a while to import, and only `serve` needs it.
    from fastapi import FastAPI  # noqa: PLC0415
    from fastapi.responses import RedirectResponse  # noqa: PLC0415

    from runtrack.fastapi import lifespan, runs_router  # noqa: PLC0415

    runtrack_lifespan = lifespan(registry)

    @asynccontextmanager
    async def app_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        async with registry, runtrack_lifespan(app) as state:
            yield state

    factory: Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]] = app_lifespan
    app = FastAPI(title="runtrack", lifespan=factory)
    app.include_router(runs_router(dashboard=True))

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("runs/ui")

    return app


def _serve(state: CliState, host: str, port: int) -> None:
    import uvicorn  # noqa: PLC0415 - only `serve` needs it

    async def probe() -> None:
        async with state.registry() as registry:
            await registry.count_runs()

    run_async(state, probe)  # an unreachable registry is exit 3 now, not a degraded server
    app = build_app(state.registry())
    click.echo(
        f"runtrack: serving {state.where} on http://{host}:{port}/ (dashboard at /runs/ui)",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="debug" if state.debug else "warning")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port."
)
@click.pass_context
def serve_command(ctx: click.Context, host: str, port: int) -> None:
    """Serve the runs API and the live dashboard (at /runs/ui) with uvicorn until Ctrl-C.

    The registry must answer at startup (else exit 3); once serving, an outage shows in
    GET /health and the server keeps running.
    """
    _serve(state_of(ctx), host, port)
