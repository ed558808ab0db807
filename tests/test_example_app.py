"""``examples/fastapi_app.py`` works: start a report, poll it, cancel it, on SQLite.

The example is imported from its file and driven over ASGI (``httpx.ASGITransport``) with
its lifespan running, each test on its own SQLite file; `TestUnderUvicorn` runs it as a
user does, in a uvicorn process, and stops it with a signal.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any, Final

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


#: Seconds the example may take to start on a busy machine (imports, SQLite schema).
STARTUP: Final = 60.0
#: Seconds it may take to exit after the signal: about one on an idle machine.
EXIT_WITHIN: Final = 10.0


class Uvicorn:
    """The example app in a uvicorn process on a free port, started as a user starts it."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.log: list[str] = []
        self._reader = asyncio.create_task(self._read_log())

    @classmethod
    async def start(cls, argv: list[str], tmp_path: Path) -> Uvicorn:
        env = {
            **os.environ,
            "PORT": "0",
            "RUNTRACK_REGISTRY_URL": f"sqlite+aiosqlite:///{tmp_path / 'reports.db'}",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        lines = []
        try:
            async with asyncio.timeout(STARTUP):
                while True:
                    line = (await proc.stderr.readline()).decode()
                    lines.append(line)
                    assert line, f"uvicorn exited: {''.join(lines)}"
                    found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
                    if found:
                        break
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        server = cls(proc, int(found.group(1)))
        server.log = lines
        return server

    async def _read_log(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line.decode())

    async def stop(self, sig: int) -> float:
        """Send ``sig``; the seconds the process took to exit."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(EXIT_WITHIN):
                await self.proc.wait()
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            await self._reader
        return time.monotonic() - started


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
class TestUnderUvicorn:
    """The example stops promptly on SIGINT/SIGTERM while clients stream its events."""

    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
    @pytest.mark.parametrize(
        "argv",
        [
            [str(EXAMPLE)],
            ["-m", "uvicorn", "fastapi_app:app", "--app-dir", str(EXAMPLE.parent), "--port", "0"],
        ],
        ids=["python-app", "uvicorn-cli"],
    )
    @pytest.mark.timeout(STARTUP + EXIT_WITHIN + 30)
    async def test_stops_while_streams_are_open(
        self, argv: list[str], sig: int, tmp_path: Path
    ) -> None:
        server = await Uvicorn.start(argv, tmp_path)
        async with httpx.AsyncClient(base_url=server.url, timeout=STARTUP) as client:
            assert (await client.get("/runs/ui")).status_code == 200
            async with (
                client.stream("GET", "/runs/events") as dashboard,
                client.stream("GET", "/runs/events") as curl,
            ):
                streams = [dashboard.aiter_text(), curl.aiter_text()]
                for stream in streams:
                    assert await anext(stream) == ": connected\n\n"
                run_id = await start(client, seconds_per_section=0)
                seen = ""
                while run_id not in seen:
                    seen += await anext(streams[0])

                took = await server.stop(sig)

                # Each stream ended as a complete response: no error, nothing lost.
                rests = [[text async for text in stream] for stream in streams]
        log = "".join(server.log)
        assert took < EXIT_WITHIN, log
        assert server.proc.returncode in {0, -sig}, log
        assert "Traceback" not in log
        assert "Waiting for application shutdown." in log
        assert run_id in "".join(rests[1])  # the unread stream kept its events
