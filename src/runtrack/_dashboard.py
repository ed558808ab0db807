"""The runs dashboard: one static page, shipped in ``runtrack/dashboard/``, served by the router.

``runs_router(dashboard=True)`` calls `add_dashboard_routes`, which serves the page at
``/runs/ui`` and its two assets at ``/runs/ui/app.js`` and ``/runs/ui/style.css``. The page
finds the API relative to its own URL, so an ``include_router`` prefix moves it along with
the runs endpoints; it reads them with the browser's credentials (cookies), so the router's
``dependencies`` protect it as they protect the API.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

__all__ = ["ASSETS", "UI_PATH", "add_dashboard_routes"]

#: Where the page is served, relative to the router (before any ``include_router`` prefix).
UI_PATH: Final = "/runs/ui"
#: The files next to the page that it may load, with their media types. Nothing else is served.
ASSETS: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_PAGE: Final = "index.html"
_HEADERS: Final = {
    # Always revalidate: the file names carry no version, and an upgrade must show at once.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# The page loads nothing but its own files and talks to nothing but its own origin.
_PAGE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    etag: str


@functools.cache
def _load(name: str) -> _File:
    body = resources.files("runtrack").joinpath("dashboard", name).read_bytes()
    return _File(body=body, etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def _serve(request: Request, name: str, media_type: str, headers: dict[str, str]) -> Response:
    file = _load(name)
    headers = {**headers, "ETag": file.etag}
    if file.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=media_type, headers=headers)


def add_dashboard_routes(router: APIRouter) -> None:
    """Serve the dashboard from ``router``: ``GET /runs/ui`` and ``GET /runs/ui/{asset}``.

    Call it before ``/runs/{run_id}`` is declared on the router, which would otherwise take
    ``ui`` for a run id. The routes stay out of the OpenAPI schema.

    Args:
        router: The runs router (its prefix and dependencies apply to the dashboard too).
    """

    @router.get(UI_PATH, include_in_schema=False)
    async def dashboard_page(request: Request) -> Response:
        """The dashboard page."""
        headers = {**_HEADERS, "Content-Security-Policy": _PAGE_CSP}
        return _serve(request, _PAGE, "text/html; charset=utf-8", headers)

    @router.get(UI_PATH + "/{asset}", include_in_schema=False)
    async def dashboard_asset(request: Request, asset: str) -> Response:
        """One of the page's own files (`ASSETS`); 404 for any other name."""
        media_type = ASSETS.get(asset)
        if media_type is None:
            return JSONResponse(
                {"error": f"no dashboard file {asset[:100]!r}", "code": "not_found"},
                status_code=404,
            )
        return _serve(request, asset, media_type, _HEADERS)
