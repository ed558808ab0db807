"""``examples/fastapi_app.py`` works: start a report, poll it, cancel it, on SQLite.

The example is imported from its file and driven over ASGI (``httpx.ASGITransport``) with
its lifespan running, each test on its own SQLite file.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from helpers import SAFETY
from runtrack import BackgroundTaskManager

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture
def app(example: ModuleType, tmp_path: Path) -> FastAPI:
    app = example.create_app(f"sqlite+aiosqlite:///{tmp_path / 'reports.db'}")
    assert isinstance(app, FastAPI)
    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://reports.test") as client,
    ):
        yield client


def manager_of(app: FastAPI) -> BackgroundTaskManager:
    manager = app.state.runtrack_manager
    assert isinstance(manager, BackgroundTaskManager)
    return manager


async def start(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/reports", json={"customer": "acme", **body})
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    assert isinstance(run_id, str)
    assert response.headers["location"] == f"/reports/{run_id}"
    return run_id


class TestExampleApp:
    """The report service of examples/fastapi_app.py."""

    async def test_start_then_poll_until_done(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        run_id = await start(client, period="2024-Q4", seconds_per_section=0)
        polled = await client.get(f"/reports/{run_id}")
        assert polled.status_code == 200
        assert polled.json()["status"] in {"queued", "running", "completed"}

        await manager_of(app).wait(run_id, timeout=SAFETY)
        report = (await client.get(f"/reports/{run_id}")).json()
        assert report == {
            "run_id": run_id,
            "status": "completed",
            "progress": 1.0,
            "step": "forecast (5/5)",
            "report": {
                "customer": "acme",
                "period": "2024-Q4",
                "file": "reports/acme-2024-Q4.pdf",
            },
            "error": None,
        }
        # The same run through runtrack's own router, which the example mounts.
        run = (await client.get(f"/runs/{run_id}")).json()
        assert (run["name"], run["group"], run["timeout"]) == ("report", "reports", 600.0)
        output = (await client.get(f"/runs/{run_id}/output")).json()
        assert output["chunks"][-1]["text"] == "done\n"

    async def test_cancel_a_running_report(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        run_id = await start(client, seconds_per_section=60)
        assert (await client.get(f"/reports/{run_id}")).json()["status"] in {"queued", "running"}

        cancelled = await client.post(f"/reports/{run_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert (await client.get(f"/reports/{run_id}")).json()["status"] == "cancelled"
        run = await manager_of(app).registry.get_run(run_id)
        assert run is not None
        assert run.status.value == "cancelled"

        again = await client.post(f"/reports/{run_id}/cancel")
        assert again.status_code == 409

    async def test_unknown_and_invalid(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/reports/nope")).status_code == 404
        assert (await client.post("/reports/nope/cancel")).status_code == 404
        bad = await client.post("/reports", json={"customer": "acme", "period": "Q1"})
        assert bad.status_code == 422

    async def test_reports_are_not_a_door_to_other_runs(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        async def other() -> None:
            return None

        run = await manager_of(app).submit(other, name="not-a-report")
        await manager_of(app).wait(run.run_id, timeout=SAFETY)
        assert (await client.get(f"/reports/{run.run_id}")).status_code == 404

    async def test_dashboard_is_mounted(self, client: httpx.AsyncClient) -> None:
        page = await client.get("/runs/ui")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
