"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright.

A real server (uvicorn, on a free loopback port) serves an app with
``runs_router(dashboard=True)`` mounted under a prefix, so the page must find the API
relative to its own URL. Runs report progress in steps the test releases; every check is
one of Playwright's auto-waiting ``expect`` assertions, never a sleep.

No browser is downloaded: the test uses ``/usr/bin/chromium`` (the Makefile installs it).
Without it the test is skipped locally and fails on CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Route,
    async_playwright,
    expect,
)

import runtrack
from helpers import SAFETY, wait_event
from registries import skip_or_fail
from runtrack import BackgroundTaskManager, InMemoryRunRegistry, RunStatus
from runtrack.fastapi import TaskManager, lifespan, runs_router

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PREFIX: Final = "/api"
#: Milliseconds an ``expect`` waits; the page polls running runs every second.
EXPECT_MS: Final = 10_000
STEPS: Final = 4

expect.set_options(timeout=EXPECT_MS)


@dataclass
class Steps:
    """A report whose progress moves one step each time the test calls `release`."""

    reported: list[asyncio.Event] = field(
        default_factory=lambda: [asyncio.Event() for _ in range(STEPS)]
    )
    _gates: list[asyncio.Event] = field(
        default_factory=lambda: [asyncio.Event() for _ in range(STEPS)]
    )
    _finish: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self, step: int) -> None:
        self._gates[step - 1].set()

    async def body(self) -> str:
        run = runtrack.current_run()
        for step, (gate, reported) in enumerate(zip(self._gates, self.reported, strict=True), 1):
            await gate.wait()
            await runtrack.report_progress(step / STEPS, f"step {step} of {STEPS}")
            await run.write_output(f"finished step {step}\n")
            reported.set()
        await self._finish.wait()  # until cancelled
        return "done"


@dataclass
class Server:
    """The app served on loopback, and what the test needs to drive it."""

    url: str
    manager: BackgroundTaskManager
    registry: InMemoryRunRegistry
    steps: Steps


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing: install Debian's chromium (make does it as root)")
    return CHROMIUM


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    started = asyncio.Event()
    steps = Steps()

    @contextlib.asynccontextmanager
    async def signal_started(app: FastAPI) -> AsyncIterator[None]:
        started.set()
        yield

    async with InMemoryRunRegistry() as registry:
        app = FastAPI(lifespan=lifespan(registry, app_lifespan=signal_started, grace=0))
        app.include_router(runs_router(dashboard=True), prefix=PREFIX)

        @app.post(f"{PREFIX}/reports", status_code=202)
        async def start_report(manager: TaskManager, name: str = "report") -> dict[str, str]:
            run = await manager.submit(steps.body, name=name, tags={"kind": "e2e"})
            return {"run_id": run.run_id}

        sock = free_socket()
        config = uvicorn.Config(
            app, log_config=None, log_level="warning", lifespan="on", ws="none",
            timeout_graceful_shutdown=5,
        )  # fmt: skip
        uv = uvicorn.Server(config)
        task = asyncio.create_task(uv.serve(sockets=[sock]))
        try:
            await wait_event(started, timeout=10 * SAFETY)
            host, port = sock.getsockname()
            manager = app.state.runtrack_manager
            assert isinstance(manager, BackgroundTaskManager)
            yield Server(f"http://{host}:{port}", manager, registry, steps)
        finally:
            uv.should_exit = True
            await asyncio.wait_for(task, timeout=30)
            sock.close()


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(EXPECT_MS)
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # HTTP errors the page handles (a 409, an aborted stream) are logged by Chromium
        # too; anything else, a CSP violation included, is a bug of the page.
        if message.type == "error" and "Failed to load resource" not in message.text:
            errors.append(message.text)

    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", on_console)
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"the page reported errors: {errors}"


async def start_report(page: Page, server: Server, name: str = "report") -> str:
    """Start a run through the app's HTTP API, as a client of the service would."""
    response = await page.request.post(f"{server.url}{PREFIX}/reports", params={"name": name})
    assert response.status == 202, await response.text()
    body: dict[str, Any] = await response.json()
    run_id = body["run_id"]
    assert isinstance(run_id, str)
    return run_id


class TestDashboard:
    """A person watching and cancelling a run on the dashboard."""

    async def test_run_appears_progresses_and_cancels(self, server: Server, page: Page) -> None:
        await page.goto(f"{server.url}{PREFIX}/runs/ui")
        await expect(page).to_have_title("Runs · runtrack")
        await expect(page.locator("#live")).to_have_attribute("data-state", "live")

        run_id = await start_report(page, server, name="quarterly report")
        row = page.locator(f'#runs-body tr[data-run-id="{run_id}"]')
        await expect(row).to_be_visible()
        await expect(row.locator(".badge")).to_have_text("running")
        await expect(row.locator("td.name")).to_have_text("quarterly report")
        await expect(row.get_by_role("button", name=f"Show run {run_id}")).to_have_text(run_id[:8])

        bar = row.get_by_role("progressbar")
        for step in (1, 2):
            server.steps.release(step)
            await wait_event(server.steps.reported[step - 1])
            percent = str(step * 100 // STEPS)
            await expect(bar).to_have_attribute("aria-valuenow", percent)
            await expect(row.locator(".progress-text")).to_have_text(
                f"{percent}% · step {step} of {STEPS}"
            )

        await row.click()
        await expect(page.get_by_role("region", name="quarterly report running")).to_be_visible()
        detail = page.locator("#detail")
        await expect(row).to_have_attribute("aria-current", "true")
        await expect(detail.locator("#detail-fields")).to_contain_text(run_id)
        await expect(detail.locator("#detail-fields")).to_contain_text("kind: e2e")
        await expect(detail.locator("#detail-output")).to_contain_text("finished step 2")
        # The detail follows the running run too.
        server.steps.release(3)
        await expect(detail.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "75")
        await expect(detail.locator("#detail-output")).to_contain_text("finished step 3")

        await detail.get_by_role("button", name="Cancel run").click()
        await expect(detail.locator("#detail-heading .badge")).to_have_text("cancelled")
        await expect(row.locator(".badge")).to_have_text("cancelled")
        await expect(detail.get_by_role("button", name="Cancel run")).to_be_hidden()
        await expect(page.locator("#detail-error")).to_be_hidden()

        run = await server.registry.get_run(run_id)
        assert run is not None
        assert run.status is RunStatus.CANCELLED
        assert run.progress == 0.75

    async def test_managers_view(self, server: Server, page: Page) -> None:
        me = server.manager
        await page.goto(f"{server.url}{PREFIX}/runs/ui")

        view = page.get_by_role("region", name="Managers")
        await expect(view).to_be_visible()
        row = view.locator(f'tbody tr[data-owner="{me.owner}"]')
        await expect(row).to_be_visible()
        cells = row.locator("th, td")
        await expect(cells.nth(0)).to_have_text(me.owner)
        await expect(cells.nth(1)).to_have_text(socket.gethostname())
        await expect(cells.nth(2)).to_have_text(str(os.getpid()))
        await expect(cells.nth(3).locator("time")).to_have_count(1)
        await expect(cells.nth(4).locator("time")).to_have_count(1)
        await expect(cells.nth(5)).to_have_text("0 / \N{INFINITY}")
        await expect(row).to_have_attribute("data-late", "false")
        await expect(view.locator("#managers-error")).to_be_hidden()

        # A manager that stopped heartbeating is shown late. It is added to the real answer
        # in flight: registered in the registry, the app's own lease check could sweep it
        # at any moment.
        beat = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        late = {
            "owner": "<b>gone</b>", "host": "elsewhere", "pid": 7, "started_at": beat,
            "heartbeat_at": beat, "lease_seconds": 60.0, "max_concurrency": 4, "running": 1,
        }  # fmt: skip

        async def add_late(route: Route) -> None:
            response = await route.fetch()
            await route.fulfill(response=response, json=[*await response.json(), late])

        await page.route(f"**{PREFIX}/managers", add_late)
        await page.get_by_role("button", name="Refresh").click()
        gone = view.locator('tbody tr[data-owner="<b>gone</b>"]')
        await expect(gone).to_have_attribute("data-late", "true")
        await expect(gone.locator("th")).to_have_text("<b>gone</b>")
        await expect(gone.locator(".badge")).to_have_text("late")
        await expect(gone.locator("td").nth(4)).to_have_text("1 / 4")
        await expect(view.locator("b")).to_have_count(0)
        await expect(row).to_have_attribute("data-late", "false")

        # A registry without managers (501) says so instead of an empty list.
        await page.unroute(f"**{PREFIX}/managers")
        await page.route(
            f"**{PREFIX}/managers",
            lambda route: route.fulfill(
                status=501, json={"error": "keeps no managers", "code": "managers_unsupported"}
            ),
        )
        await page.get_by_role("button", name="Refresh").click()
        await expect(view.locator("#managers-error")).to_have_text(
            "The registry does not keep managers."
        )

    async def test_status_filter_pages_and_escaping(self, server: Server, page: Page) -> None:
        evil = '<img src=x onerror="document.title=1">'
        first = await start_report(page, server, name=evil)
        second = await start_report(page, server, name="second")
        await server.manager.cancel_task(first)

        await page.goto(f"{server.url}{PREFIX}/runs/ui")
        rows = page.locator("#runs-body tr")
        await expect(rows).to_have_count(2)
        # Newest first, and run data shows as text: nothing in it becomes markup.
        await expect(rows.nth(0)).to_have_attribute("data-run-id", second)
        await expect(rows.nth(1).locator("td.name")).to_have_text(evil)
        await expect(page.locator("#runs-body img")).to_have_count(0)

        await page.get_by_label("Status").select_option("cancelled")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-run-id", first)
        await page.get_by_label("Status").select_option("running")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-run-id", second)

        # The stream brings a new run in; pages of 10 then split the 11 runs.
        await page.get_by_label("Status").select_option("")
        for index in range(9):
            await start_report(page, server, name=f"batch {index}")
        await expect(page.locator("#page-info")).to_have_text("Runs 1\N{EN DASH}11")
        await page.get_by_label("Per page").select_option("10")
        await expect(rows).to_have_count(10)
        await page.get_by_role("button", name="Older →").click()
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-run-id", first)
        await expect(page.locator("#page-info")).to_have_text("Run 11")
        await expect(page.get_by_role("button", name="Older →")).to_be_disabled()

    async def test_cancel_of_a_finished_run_shows_the_api_error(
        self, server: Server, page: Page
    ) -> None:
        run_id = await start_report(page, server)
        # A page that cannot hear about the run ending: no event stream, and its timers
        # stopped, so it still offers to cancel a run that the server has cancelled.
        await page.route("**/runs/events", lambda route: route.abort())
        await page.clock.install()
        await page.clock.pause_at(datetime.now(UTC) + timedelta(hours=1))
        await page.goto(f"{server.url}{PREFIX}/runs/ui#run={run_id}")
        detail = page.locator("#detail")
        await expect(detail.locator("#detail-heading .badge")).to_have_text("running")

        assert await server.manager.cancel_task(run_id)
        await detail.get_by_role("button", name="Cancel run").click()
        alert = detail.get_by_role("alert")
        # The API's JSON error, status and code included (its wording is the API's).
        await expect(alert).to_have_text(
            re.compile(rf"^Could not cancel: 409 run_finished: .*{re.escape(run_id)}")
        )
        # ... and then shows what the run became.
        await expect(detail.locator("#detail-heading .badge")).to_have_text("cancelled")
        await expect(detail.get_by_role("button", name="Cancel run")).to_be_hidden()

    async def test_requeue_a_dead_letter(self, server: Server, page: Page) -> None:
        now = datetime.now(UTC)
        dead = runtrack.Run(
            name="charge", task="charge", args={"args": [7], "kwargs": {}},
            status=RunStatus.FAILED, created_at=now - timedelta(seconds=2),
            started_at=now - timedelta(seconds=1), finished_at=now, dead=True,
            error_type="ValueError", error_message="card declined",
        )  # fmt: skip
        local = runtrack.Run(name="local", status=RunStatus.FAILED, finished_at=now)
        await server.registry.add_run(dead)
        await server.registry.add_run(local)
        detail = page.locator("#detail")
        requeue = detail.get_by_role("button", name="Requeue")

        # A local run cannot be requeued: no button.
        await page.goto(f"{server.url}{PREFIX}/runs/ui#run={local.run_id}")
        await expect(detail.locator("#detail-heading .badge")).to_have_text("failed")
        await expect(requeue).to_be_hidden()

        await page.goto(f"{server.url}{PREFIX}/runs/ui#run={dead.run_id}")
        await page.reload()  # a new hash alone does not load the page again
        await expect(detail.get_by_text("yes: its retries ran out")).to_be_visible()
        await requeue.click()
        # The view moves to the new run, which names the dead letter it came from.
        await expect(detail.locator("#detail-heading .badge")).to_have_text("queued")
        await expect(detail.get_by_text(dead.run_id)).to_be_visible()
        await expect(requeue).to_be_hidden()
        (new,) = await server.registry.list_runs(status=RunStatus.QUEUED)
        assert new.requeued_from == dead.run_id
        assert new.args == dead.args
        await expect(page).to_have_url(re.compile(rf"#run={new.run_id}$"))
