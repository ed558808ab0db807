"""How the router serves the dashboard's files (the page itself: test_dashboard_e2e.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException

from runtrack.fastapi import lifespan, runs_router


@pytest.fixture(params=["", "/api/v1"], ids=["no-prefix", "prefix"])
def prefix(request: pytest.FixtureRequest) -> str:
    value = request.param
    assert isinstance(value, str)
    return value


@pytest.fixture
async def client(prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI(lifespan=lifespan())
    app.include_router(runs_router(dashboard=True), prefix=prefix)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=f"http://test{prefix}/") as client,
    ):
        yield client


class TestDashboardFiles:
    """GET /runs/ui and its two assets, and nothing else."""

    async def test_page(self, client: httpx.AsyncClient) -> None:
        response = await client.get("runs/ui")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in response.headers["content-security-policy"]
        # Relative URLs: the page and its files move with any include_router prefix.
        assert '<script src="ui/app.js" defer></script>' in response.text
        assert '<link rel="stylesheet" href="ui/style.css">' in response.text

    @pytest.mark.parametrize(
        ("asset", "media_type", "marker"),
        [
            ("app.js", "text/javascript; charset=utf-8", '"use strict";'),
            ("style.css", "text/css; charset=utf-8", ".progress-fill"),
        ],
    )
    async def test_assets(
        self, client: httpx.AsyncClient, asset: str, media_type: str, marker: str
    ) -> None:
        response = await client.get(f"runs/ui/{asset}")
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type
        assert response.headers["x-content-type-options"] == "nosniff"
        assert marker in response.text

        etag = response.headers["etag"]
        cached = await client.get(f"runs/ui/{asset}", headers={"If-None-Match": etag})
        assert cached.status_code == 304
        assert cached.content == b""

    @pytest.mark.parametrize(
        "path",
        [
            "runs/ui/index.html",
            "runs/ui/app.py",
            "runs/ui/..%2F_dashboard.py",
            "runs/ui/%2E%2E%2F%2E%2E%2Ffastapi.py",
            "runs/ui/dashboard%2Fapp.js",
            "runs/ui/__init__.py",
        ],
    )
    async def test_nothing_else(self, client: httpx.AsyncClient, path: str) -> None:
        response = await client.get(path)
        assert response.status_code == 404
        assert "use strict" not in response.text
        assert "import" not in response.text

    async def test_ui_is_not_a_run_id_and_not_in_the_schema(
        self, client: httpx.AsyncClient, prefix: str
    ) -> None:
        assert (await client.get("runs/ui")).status_code == 200
        assert (await client.get("runs/some-id")).json()["code"] == "run_not_found"
        paths = (await client.get("http://test/openapi.json")).json()["paths"]
        assert f"{prefix}/runs/{{run_id}}" in paths
        assert not [path for path in paths if "/ui" in path]


async def test_dashboard_is_opt_in() -> None:
    app = FastAPI(lifespan=lifespan())
    app.include_router(runs_router())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        response = await client.get("/runs/ui")
    assert response.status_code == 404
    assert response.json()["code"] == "run_not_found"


class TestDashboardBehindAuth:
    """The router's ``dependencies`` guard the dashboard page, its files and the API it reads."""

    TOKEN = "s3cret"
    PATHS = ("runs/ui", "runs/ui/app.js", "runs/ui/style.css", "runs", "metrics", "health")

    @pytest.fixture
    async def guarded(self) -> AsyncIterator[httpx.AsyncClient]:
        async def check_token(authorization: str | None = Header(default=None)) -> None:
            if authorization != f"Bearer {self.TOKEN}":
                raise HTTPException(status_code=401, detail="missing or wrong token")

        app = FastAPI(lifespan=lifespan())
        app.include_router(runs_router(dashboard=True, dependencies=[Depends(check_token)]))
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test/") as client,
        ):
            yield client

    @pytest.mark.parametrize("path", PATHS)
    @pytest.mark.parametrize("authorization", [None, "Bearer wrong", "s3cret"])
    async def test_refused_without_the_token(
        self, guarded: httpx.AsyncClient, path: str, authorization: str | None
    ) -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await guarded.get(path, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "missing or wrong token"}
        assert "use strict" not in response.text
        assert "<script" not in response.text

    @pytest.mark.parametrize("path", PATHS)
    async def test_served_with_the_token(self, guarded: httpx.AsyncClient, path: str) -> None:
        response = await guarded.get(path, headers={"Authorization": f"Bearer {self.TOKEN}"})
        assert response.status_code == 200
        if path == "runs/ui":
            assert '<script src="ui/app.js" defer></script>' in response.text
        elif path == "runs/ui/app.js":
            assert '"use strict";' in response.text
        elif path == "runs":
            assert response.json()["runs"] == []  # the API the page reads: no runs yet

    async def test_cancel_refused_without_the_token(self, guarded: httpx.AsyncClient) -> None:
        response = await guarded.post("runs/some-id/cancel")
        assert response.status_code == 401
