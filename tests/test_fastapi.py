"""``runtrack.fastapi``: the lifespan, the dependency and the runs router, over real ASGI.

Apps are started the way a server starts them: ``app.router.lifespan_context(app)`` with an
``httpx.ASGITransport`` client, or `AsgiServer`, which speaks the ASGI lifespan protocol
(lifespan state included) and streams response bodies, for the server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import structlog.testing
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import TypeAdapter
from starlette.requests import ClientDisconnect
from starlette.types import Message

import runtrack
import runtrack._api_lifespan
import runtrack.fastapi as rtf
from helpers import SAFETY, DelegatingRegistry, Gate, let_loop_run
from runtrack import (
    BackgroundTaskManager,
    InMemoryRunRegistry,
    RegistryUnavailableError,
    Run,
    RunEvent,
    RunRegistry,
    RunStatus,
    RuntrackError,
)
from runtrack._api_events import EventFeed, EventStreamResponse
from runtrack._models import utcnow
from runtrack.fastapi import get_task_manager, lifespan, runs_router
from runtrack.registry.sql import SQLRunRegistry

API_KEY = "s3cret-key"
#: How every response writes a time: UTC, "Z", microseconds when there are any.
TIME_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
_JSON_TIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def make_app(
    registry: RunRegistry | str | None = None,
    *,
    router_options: dict[str, Any] | None = None,
    include_prefix: str = "",
    **lifespan_options: Any,
) -> FastAPI:
    app = FastAPI(lifespan=lifespan(registry, **lifespan_options))
    app.include_router(runs_router(**(router_options or {})), prefix=include_prefix)
    return app


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Start ``app`` (its lifespan), yield a client for it, then shut it down."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


def manager_of(app: FastAPI) -> BackgroundTaskManager:
    manager = app.state.runtrack_manager
    assert isinstance(manager, BackgroundTaskManager)
    return manager


async def done(manager: BackgroundTaskManager, run_id: str) -> Run:
    return await manager.wait(run_id, timeout=SAFETY)


async def quick(value: object = "ok") -> object:
    return value


class ListenerSpy:
    """Tracks the listeners registered on a manager, through its public methods."""

    def __init__(self, manager: BackgroundTaskManager, monkeypatch: pytest.MonkeyPatch) -> None:
        self.live: list[Callable[[RunEvent], object]] = []
        add, remove = manager.add_listener, manager.remove_listener

        def add_listener(callback: Callable[[RunEvent], object]) -> None:
            self.live.append(callback)
            add(callback)

        def remove_listener(callback: Callable[[RunEvent], object]) -> None:
            self.live.remove(callback)
            remove(callback)

        monkeypatch.setattr(manager, "add_listener", add_listener)
        monkeypatch.setattr(manager, "remove_listener", remove_listener)


# -- a minimal ASGI server: lifespan protocol with state, streamed bodies ------------------------


class Stream:
    """A response whose body arrives chunk by chunk."""

    def __init__(
        self, status: int, headers: dict[str, str], messages: asyncio.Queue[Message]
    ) -> None:
        self.status = status
        self.headers = headers
        self._messages = messages
        self._buffer = ""

    async def next_message(self, timeout: float = SAFETY) -> str:
        """The next SSE message (the text before a blank line)."""
        async with asyncio.timeout(timeout):
            while "\n\n" not in self._buffer:
                message = await self._messages.get()
                assert message["type"] == "http.response.body"
                assert message.get("more_body"), "the stream ended"
                self._buffer += message["body"].decode()
        text, self._buffer = self._buffer.split("\n\n", 1)
        return text

    async def rest(self, timeout: float = SAFETY) -> str:
        """Everything up to the end of the body, which must come within ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self._messages.get()
                assert message["type"] == "http.response.body"
                self._buffer += message.get("body", b"").decode()
                if not message.get("more_body"):
                    rest, self._buffer = self._buffer, ""
                    return rest

    async def run_events(self, run_id: str, count: int) -> list[dict[str, Any]]:
        """The data of the next ``count`` ``event: run`` messages about ``run_id``."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            lines = (await self.next_message()).splitlines()
            if lines[0] != "event: run":
                continue
            assert lines[1].startswith("data: ")
            data = json.loads(lines[1].removeprefix("data: "))
            if data["run_id"] == run_id:
                found.append(data)
        return found


class AsgiServer:
    """Runs an app the way an ASGI server does, with lifespan state, for one test."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiServer:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        await self._inbox.put({"type": "lifespan.startup"})
        self._task = asyncio.create_task(self.app(scope, self._inbox.get, self._outbox.put))
        async with asyncio.timeout(SAFETY):
            message = await self._outbox.get()
        assert message["type"] == "lifespan.startup.complete", message
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        await self._inbox.put({"type": "lifespan.shutdown"})
        async with asyncio.timeout(SAFETY):
            message = await self._outbox.get()
            await self._task
        assert message["type"] == "lifespan.shutdown.complete", message

    def _scope(self, method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
        path, _, query = path.partition("?")
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"test")]
            + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 5000),
            "server": ("test", 80),
            "state": dict(self.state),  # servers hand each request a shallow copy
        }

    @asynccontextmanager
    async def stream(
        self, path: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[Stream]:
        """GET ``path``; the client disconnects when the block exits."""
        messages: asyncio.Queue[Message] = asyncio.Queue()
        disconnect = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        task = asyncio.create_task(
            self.app(self._scope("GET", path, headers or {}), receive, messages.put)
        )
        try:
            async with asyncio.timeout(SAFETY):
                start = await messages.get()
            assert start["type"] == "http.response.start"
            response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
            yield Stream(start["status"], response_headers, messages)
        finally:
            disconnect.set()
            async with asyncio.timeout(SAFETY):
                await task

    async def get(self, path: str) -> tuple[int, Any]:
        """GET a finite response: its status and JSON body."""
        async with self.stream(path) as response:
            body = b""
            while True:
                message = await response._messages.get()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    return response.status, json.loads(body)


# -- lifespan ------------------------------------------------------------------------------------


class TestLifespan:
    """lifespan() owns one manager per startup and composes with the app's own lifespan."""

    async def test_starts_and_shuts_down_a_manager(self) -> None:
        app = make_app(max_concurrency=3)
        assert not hasattr(app.state, "runtrack_manager")
        async with serve(app) as client:
            manager = manager_of(app)
            assert manager.stats().state == "running"
            assert manager.max_concurrency == 3
            assert runtrack.get_default_manager() is manager
            assert (await client.get("/health")).json()["manager"] == "running"
        assert manager.stats().state == "closed"
        assert not hasattr(app.state, "runtrack_manager")
        with pytest.raises(RuntrackError):
            runtrack.get_default_manager()

    async def test_each_startup_gets_a_fresh_manager(self) -> None:
        app = make_app()
        async with serve(app):
            first = manager_of(app)
        async with serve(app):
            assert manager_of(app) is not first
            assert manager_of(app).stats().state == "running"

    async def test_composes_with_the_app_lifespan(self) -> None:
        order: list[str] = []

        @asynccontextmanager
        async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
            manager = manager_of(app)
            order.append(f"app startup, manager {manager.stats().state}")
            yield {"greeting": "hello"}
            order.append(f"app shutdown, manager {manager.stats().state}")

        app = FastAPI(lifespan=lifespan(app_lifespan=app_lifespan))

        @app.get("/state")
        async def state(request: Request) -> dict[str, str]:
            manager = get_task_manager(request)
            assert request.state.runtrack_manager is manager
            return {"greeting": request.state.greeting, "state": manager.stats().state}

        async with AsgiServer(app) as server:
            manager = manager_of(app)
            assert server.state == {"greeting": "hello", "runtrack_manager": manager}
            assert await server.get("/state") == (200, {"greeting": "hello", "state": "running"})
            order.append("serving")
        order.append(f"after shutdown, manager {manager.stats().state}")
        assert order == [
            "app startup, manager running",
            "serving",
            "app shutdown, manager running",
            "after shutdown, manager closed",
        ]

    async def test_chains_with_an_exit_stack(self) -> None:
        order: list[str] = []
        ours = lifespan()

        @asynccontextmanager
        async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
            async with AsyncExitStack() as stack:
                state = await stack.enter_async_context(ours(app))
                order.append(f"startup, manager {state['runtrack_manager'].stats().state}")
                yield state
                order.append("shutdown")

        app = FastAPI(lifespan=app_lifespan)
        app.include_router(runs_router())
        async with AsgiServer(app) as server:
            assert (await server.get("/health"))[0] == 200
            manager = server.state["runtrack_manager"]
        assert order == ["startup, manager running", "shutdown"]
        assert manager.stats().state == "closed"

    async def test_an_app_startup_failure_shuts_the_manager_down(self) -> None:
        class Broken:
            async def __aenter__(self) -> None:
                raise OSError("database down")

            async def __aexit__(self, *exc_info: object) -> None:
                pass  # pragma: no cover

        app = FastAPI(lifespan=lifespan(app_lifespan=lambda app: Broken()))
        with pytest.raises(OSError, match="database down"):
            async with app.router.lifespan_context(app):
                pytest.fail("started")  # pragma: no cover
        with pytest.raises(RuntrackError):
            runtrack.get_default_manager()

    def test_mistakes_fail_at_once(self) -> None:
        with pytest.raises(TypeError, match="max_concurency"):
            lifespan(max_concurency=3)
        with pytest.raises(TypeError, match="RunRegistry"):
            lifespan(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="grace"):
            lifespan(grace=-1)

    async def test_url_registry_is_built_and_closed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        closed: list[SQLRunRegistry] = []
        original = SQLRunRegistry.aclose

        async def aclose(self: SQLRunRegistry) -> None:
            closed.append(self)
            await original(self)

        monkeypatch.setattr(SQLRunRegistry, "aclose", aclose)
        url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
        app = make_app(url)
        async with serve(app) as client:
            manager = manager_of(app)
            assert isinstance(manager.registry, SQLRunRegistry)
            run = await manager.submit(quick, "stored")
            await done(manager, run.run_id)
            assert (await client.get(f"/runs/{run.run_id}")).json()["result"] == "stored"
        assert closed == [manager.registry]
        async with SQLRunRegistry(url) as reader:
            stored = await reader.get_run(run.run_id)
        assert stored is not None
        assert stored.status is RunStatus.COMPLETED

    async def test_a_registry_object_is_not_closed(self) -> None:
        registry = InMemoryRunRegistry()
        closed = False

        async def aclose() -> None:
            nonlocal closed
            closed = True

        registry.aclose = aclose  # type: ignore[method-assign]
        async with serve(make_app(registry)):
            pass
        assert not closed


class TestShutdown:
    """Runs in flight at shutdown end COMPLETED within the grace or CANCELLED after it."""

    @pytest.mark.parametrize("backend", ["memory", "sqlite"])
    async def test_in_flight_runs_end_finished(self, backend: str, tmp_path: Path) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
        registry: RunRegistry | str = InMemoryRunRegistry() if backend == "memory" else url
        app = make_app(registry, grace=0.5)
        finishing, stuck = Gate("finishing"), Gate("stuck")
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(serve(app))
            manager = manager_of(app)
            kept = await manager.submit(finishing.body, name="finishing")
            cut = await manager.submit(stuck.body, name="stuck")
            async with asyncio.timeout(SAFETY):
                await finishing.started.wait()
                await stuck.started.wait()
            shutdown = asyncio.create_task(stack.aclose())
            for _ in range(100):  # until shutdown has begun (it then refuses new runs)
                await let_loop_run(1)
                if manager.stats().state == "closing":
                    break
            assert manager.stats().state == "closing"
            finishing.open("finished in the grace")
            async with asyncio.timeout(SAFETY):
                await shutdown
        assert stuck.cancelled.is_set()
        reader = registry if isinstance(registry, InMemoryRunRegistry) else SQLRunRegistry(url)
        async with reader:
            runs = {r.run_id: r for r in await reader.list_runs()}
        assert runs[kept.run_id].status is RunStatus.COMPLETED
        assert runs[kept.run_id].result == "finished in the grace"
        assert runs[cut.run_id].status is RunStatus.CANCELLED
        assert not [r for r in runs.values() if not r.is_finished]


# -- the dependency ------------------------------------------------------------------------------


class TestDependency:
    """get_task_manager finds the app's manager, or says how to configure one."""

    async def test_handlers_receive_the_manager(self) -> None:
        app = FastAPI(lifespan=lifespan())

        @app.post("/work")
        async def start(manager: rtf.TaskManager) -> dict[str, str]:
            return {"run_id": manager.start_call(quick, "from handler")}

        async with serve(app) as client:
            run_id = (await client.post("/work")).json()["run_id"]
            assert (await done(manager_of(app), run_id)).result == "from handler"

    async def test_without_the_lifespan_the_error_says_what_to_do(self) -> None:
        app = FastAPI()

        @app.get("/manager")
        async def manager(request: Request) -> str:
            try:
                get_task_manager(request)
            except RuntrackError as exc:
                return str(exc)
            return "found"  # pragma: no cover

        app.include_router(runs_router(expose_errors=True))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (
                "lifespan=runtrack.fastapi.lifespan(...)" in (await client.get("/manager")).json()
            )
            response = await client.get("/runs")
        assert response.status_code == 500
        assert response.json()["code"] == "internal_error"
        assert "lifespan=runtrack.fastapi.lifespan" in response.json()["error"]


# -- the router ----------------------------------------------------------------------------------


@pytest.fixture
async def app() -> AsyncIterator[FastAPI]:
    app = make_app(InMemoryRunRegistry())
    async with serve(app) as client:
        app.state.client = client
        yield app


@pytest.fixture
def client(app: FastAPI) -> httpx.AsyncClient:
    client = app.state.client
    assert isinstance(client, httpx.AsyncClient)
    return client


@pytest.fixture
def manager(app: FastAPI) -> BackgroundTaskManager:
    return manager_of(app)


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code"}
    assert body["code"] == code
    assert isinstance(body["error"], str)
    return body["error"]


class TestListRuns:
    """GET /runs filters by status, name, group and tags, and pages newest first."""

    @pytest.fixture
    async def runs(self, manager: BackgroundTaskManager) -> dict[str, Run]:
        async def fail() -> None:
            raise ValueError("boom")

        made = {
            "a": await manager.submit(quick, name="export", group="io", tags={"team": "x"}),
            "b": await manager.submit(quick, name="export", tags={"team": "y", "env": "p"}),
            "c": await manager.submit(fail, name="import", group="io", tags={"team": "x"}),
        }
        for run in made.values():
            await done(manager, run.run_id)
        return made

    @staticmethod
    async def names(client: httpx.AsyncClient, query: str, runs: dict[str, Run]) -> set[str]:
        response = await client.get(f"/runs{query}")
        assert response.status_code == 200, response.text
        ids = {r["run_id"] for r in response.json()["runs"]}
        return {key for key, run in runs.items() if run.run_id in ids}

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("", {"a", "b", "c"}),
            ("?status=completed", {"a", "b"}),
            ("?status=failed&status=completed", {"a", "b", "c"}),
            ("?status=running", set()),
            ("?name=export", {"a", "b"}),
            ("?group=io", {"a", "c"}),
            ("?tag=team:x", {"a", "c"}),
            ("?tag=team:y&tag=env:p", {"b"}),
            ("?tag=team:x&status=failed&name=import&group=io", {"c"}),
        ],
    )
    async def test_filters(
        self, client: httpx.AsyncClient, runs: dict[str, Run], query: str, expected: set[str]
    ) -> None:
        assert await self.names(client, query, runs) == expected

    async def test_runs_are_json_with_enum_values(
        self, client: httpx.AsyncClient, runs: dict[str, Run]
    ) -> None:
        body = (await client.get("/runs?status=failed")).json()
        (failed,) = body["runs"]
        assert failed["status"] == "failed"
        assert failed["error_type"] == "ValueError"
        assert Run.model_validate(failed) == await client_run(client, runs["c"].run_id)

    async def test_pages(self, client: httpx.AsyncClient, manager: BackgroundTaskManager) -> None:
        ids = [(await manager.submit(quick, name="page")).run_id for _ in range(5)]
        seen: list[str] = []
        offsets = []
        offset: int | None = 0
        while offset is not None:
            body = (await client.get(f"/runs?name=page&limit=2&offset={offset}")).json()
            assert body["limit"] == 2
            assert body["offset"] == offset
            assert body["count"] == len(body["runs"])
            seen += [r["run_id"] for r in body["runs"]]
            offsets.append(offset)
            offset = body["next_offset"]
        assert offsets == [0, 2, 4]
        assert sorted(seen) == sorted(ids)
        last = (await client.get("/runs?name=page&limit=5")).json()
        assert last["count"] == 5
        assert last["next_offset"] is None
        assert (await client.get("/runs?name=page&offset=5")).json()["runs"] == []

    @pytest.mark.parametrize(
        ("query", "mentions"),
        [
            ("status=COMPLETED", "status"),
            ("status=done", "status"),
            ("tag=team", "tag"),
            ("tag=:x", "tag"),
            ("tag=team:x&tag=team:y", "tag"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("offset=-1", "offset"),
        ],
    )
    async def test_bad_filters_are_422(
        self, client: httpx.AsyncClient, query: str, mentions: str
    ) -> None:
        message = assert_error(await client.get(f"/runs?{query}"), 422, "invalid_filter")
        assert message.startswith(mentions)


async def client_run(client: httpx.AsyncClient, run_id: str) -> Run:
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.text
    return Run.model_validate(response.json())


class TestRunEndpoints:
    """GET /runs/{id}, its output, and POST /runs/{id}/cancel."""

    async def test_get_run(self, client: httpx.AsyncClient, manager: BackgroundTaskManager) -> None:
        run = await manager.submit(quick, {"n": 1}, name="one", parameters={"n": 1})
        finished = await done(manager, run.run_id)
        assert await client_run(client, run.run_id) == finished
        assert (await client.get(f"/runs/{run.run_id}")).json()["status"] == "completed"

    async def test_unknown_run_is_404(self, client: httpx.AsyncClient) -> None:
        for request in [
            client.get("/runs/nope"),
            client.get("/runs/nope/output"),
            client.post("/runs/nope/cancel"),
        ]:
            assert "nope" in assert_error(await request, 404, "run_not_found")

    async def test_output(self, client: httpx.AsyncClient, manager: BackgroundTaskManager) -> None:
        run = await manager.submit(quick)
        await done(manager, run.run_id)
        await manager.registry.append_output(
            run.run_id, [("stdout", "one"), ("stderr", "two"), ("stdout", "three")]
        )
        body = (await client.get(f"/runs/{run.run_id}/output")).json()
        assert [(c["seq"], c["stream"], c["text"]) for c in body["chunks"]] == [
            (1, "stdout", "one"),
            (2, "stderr", "two"),
            (3, "stdout", "three"),
        ]
        assert body["run_id"] == run.run_id
        assert body["next_since"] == 3
        body = (await client.get(f"/runs/{run.run_id}/output?since=1&limit=1")).json()
        assert [c["text"] for c in body["chunks"]] == ["two"]
        assert body["next_since"] == 2
        body = (await client.get(f"/runs/{run.run_id}/output?since=3")).json()
        assert body == {"run_id": run.run_id, "chunks": [], "next_since": 3}
        response = await client.get(f"/runs/{run.run_id}/output?since=-1")
        assert assert_error(response, 422, "invalid_filter").startswith("since")

    async def test_cancel(self, client: httpx.AsyncClient, manager: BackgroundTaskManager) -> None:
        gate = Gate()
        run = await manager.submit(gate.body, name="long")
        async with asyncio.timeout(SAFETY):
            await gate.started.wait()
        response = await client.post(f"/runs/{run.run_id}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        assert gate.cancelled.is_set()
        again = await client.post(f"/runs/{run.run_id}/cancel")
        assert "cancelled" in assert_error(again, 409, "run_finished")

    async def test_cancel_a_queued_run(self) -> None:
        app = make_app(max_concurrency=1)
        async with serve(app) as client:
            manager = manager_of(app)
            blocker = Gate()
            await manager.submit(blocker.body)
            waiting = await manager.submit(quick, name="waiting")
            response = await client.post(f"/runs/{waiting.run_id}/cancel")
            assert response.json()["status"] == "cancelled"
            blocker.open()

    async def test_cancel_a_completed_run_is_409(
        self, client: httpx.AsyncClient, manager: BackgroundTaskManager
    ) -> None:
        run = await manager.submit(quick)
        await done(manager, run.run_id)
        response = await client.post(f"/runs/{run.run_id}/cancel")
        assert "completed" in assert_error(response, 409, "run_finished")


class TestHealthAndMetrics:
    """GET /health checks the manager and the registry; GET /metrics is stats() as JSON."""

    async def test_healthy(self, client: httpx.AsyncClient, manager: BackgroundTaskManager) -> None:
        response = await client.get("/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["registry"] == "ok"
        assert body["manager"] == "running"
        assert body["owner"] == manager.owner
        assert body["active_runs"] == 0
        assert body["registry_latency_ms"] >= 0
        system = body["system"]
        assert system["cpu_count"] >= 1
        assert 0 < system["memory_available_bytes"] <= system["memory_total_bytes"]
        assert system["process_rss_bytes"] > 0
        assert system["load_1m"] >= 0

    async def test_degraded_when_the_registry_is_down(self) -> None:
        registry = BrokenRegistry(RegistryUnavailableError("test", "connection refused"))
        with structlog.testing.capture_logs() as logs:
            async with serve(make_app(registry)) as client:
                response = await client.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "degraded"
        assert body["registry"] == "unavailable"
        assert body["manager"] == "running"
        assert body["registry_latency_ms"] is None
        assert "health_registry_unavailable" in [e["event"] for e in logs]

    async def test_degraded_when_the_registry_hangs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("runtrack._api_health.HEALTH_TIMEOUT", 0.01)
        registry = BrokenRegistry(None)
        async with serve(make_app(registry)) as client:
            response = await client.get("/health")
        assert response.status_code == 503
        assert response.json()["registry"] == "unavailable"

    async def test_degraded_when_the_registry_fails_hides_the_error(self) -> None:
        registry = BrokenRegistry(RuntimeError("secret dsn"))
        with structlog.testing.capture_logs() as logs:
            async with serve(make_app(registry)) as client:
                response = await client.get("/health")
        assert response.status_code == 503
        assert "secret" not in response.text
        (failed,) = [e for e in logs if e["event"] == "health_registry_failed"]
        assert isinstance(failed["exc_info"], RuntimeError)

    async def test_metrics(self, client: httpx.AsyncClient, manager: BackgroundTaskManager) -> None:
        run = await manager.submit(quick, name="measured")
        await done(manager, run.run_id)
        response = await client.get("/metrics")
        assert response.status_code == 200
        body = response.json()
        assert runtrack.ManagerStats.model_validate(body) == manager.stats()
        assert body["state"] == "running"
        assert body["counts"]["completed"] == 1
        assert set(body["counts"]) == {s.value for s in RunStatus}
        assert body["by_name"]["measured"]["success_rate"] == 1.0
        assert body["queue_depth"] == {}

    async def test_metrics_read_the_queue_depth_afresh(
        self, client: httpx.AsyncClient, manager: BackgroundTaskManager
    ) -> None:
        # queued by another manager sharing the registry: this one never saw it
        await manager.registry.add_run(Run(name="elsewhere", priority=4))
        await manager.registry.add_run(Run(name="elsewhere", priority=4))
        body = (await client.get("/metrics")).json()
        assert body["queue_depth"] == {"4": 2}
        assert manager.stats().queue_depth == {4: 2}


def dead_letter(**fields: object) -> Run:
    values: dict[str, object] = {
        "name": "charge",
        "task": "charge",
        "args": {"args": [1], "kwargs": {}},
        "status": RunStatus.FAILED,
        "finished_at": utcnow(),
        "dead": True,
        "priority": 3,
    }
    values.update(fields)
    return Run.model_validate(values)


class TestDeadLetters:
    """GET /runs?dead=true and POST /runs/{id}/requeue."""

    async def test_list_dead(
        self, client: httpx.AsyncClient, manager: BackgroundTaskManager
    ) -> None:
        dead = dead_letter()
        await manager.registry.add_run(dead)
        await manager.registry.add_run(Run(name="other"))
        body = (await client.get("/runs?dead=true")).json()
        assert [r["run_id"] for r in body["runs"]] == [dead.run_id]
        assert body["runs"][0]["dead"] is True
        alive = (await client.get("/runs?dead=false")).json()
        assert [r["name"] for r in alive["runs"]] == ["other"]
        assert_error(await client.get("/runs?dead=maybe"), 422, "invalid_filter")

    async def test_requeue(self, client: httpx.AsyncClient, manager: BackgroundTaskManager) -> None:
        dead = dead_letter()
        await manager.registry.add_run(dead)
        response = await client.post(f"/runs/{dead.run_id}/requeue")
        assert response.status_code == 200, response.text
        new = Run.model_validate(response.json())
        assert new.requeued_from == dead.run_id
        assert (new.status, new.task, new.args, new.priority, new.owner) == (
            RunStatus.QUEUED, "charge", dead.args, 3, None,
        )  # fmt: skip
        assert await manager.registry.get_run(new.run_id) == new

    async def test_requeue_with_a_delay(
        self, client: httpx.AsyncClient, manager: BackgroundTaskManager
    ) -> None:
        dead = dead_letter()
        await manager.registry.add_run(dead)
        before = utcnow()
        response = await client.post(f"/runs/{dead.run_id}/requeue?delay=3600")
        assert response.status_code == 200, response.text
        new = Run.model_validate(response.json())
        assert new.not_before is not None
        assert before + timedelta(hours=1) <= new.not_before <= utcnow() + timedelta(hours=1)
        assert await manager.registry.get_run(new.run_id) == new  # recorded at once

    async def test_requeue_refusals(
        self, client: httpx.AsyncClient, manager: BackgroundTaskManager
    ) -> None:
        assert_error(await client.post("/runs/nope/requeue"), 404, "run_not_found")
        active = dead_letter(status=RunStatus.QUEUED, finished_at=None, dead=False)
        local = Run(name="local", status=RunStatus.FAILED, finished_at=utcnow())
        for run in (active, local):
            await manager.registry.add_run(run)
        message = assert_error(
            await client.post(f"/runs/{active.run_id}/requeue"), 409, "run_not_finished"
        )
        assert "queued" in message
        assert_error(await client.post(f"/runs/{local.run_id}/requeue"), 422, "run_not_durable")
        assert_error(
            await client.post(f"/runs/{active.run_id}/requeue?delay=-1"), 422, "invalid_filter"
        )
        assert len(await manager.registry.list_runs()) == 2


class TestManagers:
    """GET /managers lists the managers registered in the registry."""

    async def test_lists_the_app_manager(
        self, client: httpx.AsyncClient, manager: BackgroundTaskManager
    ) -> None:
        response = await client.get("/managers")

        assert response.status_code == 200, response.text
        (me,) = response.json()
        assert me["owner"] == manager.owner
        assert (me["host"], me["pid"]) == (socket.gethostname(), os.getpid())
        assert TIME_FORMAT.fullmatch(me["started_at"])
        assert TIME_FORMAT.fullmatch(me["heartbeat_at"])
        assert me["max_concurrency"] == manager.stats().max_concurrency
        assert me["lease_seconds"] > 0
        assert runtrack.ManagerInfo.model_validate(me).owner == manager.owner

    async def test_lists_other_managers(self) -> None:
        registry = InMemoryRunRegistry()
        async with (
            BackgroundTaskManager(registry, owner="worker-1", max_concurrency=3),
            serve(make_app(registry, owner="web")) as client,
        ):
            managers = (await client.get("/managers")).json()
        assert [(m["owner"], m["max_concurrency"]) for m in managers] == [
            ("web", None),
            ("worker-1", 3),
        ]

    async def test_a_registry_without_presence_is_501(self) -> None:
        async with serve(make_app(DelegatingRegistry())) as client:
            response = await client.get("/managers")
        message = assert_error(response, 501, "managers_unsupported")
        assert "keeps no managers" in message


class BrokenRegistry(DelegatingRegistry):
    """A registry whose reads raise ``error`` (or hang, when it is None)."""

    def __init__(self, error: Exception | None) -> None:
        super().__init__()
        self.error = error

    async def _fail(self) -> None:
        if self.error is None:
            await asyncio.Event().wait()
        assert self.error is not None
        raise self.error

    async def get_run(self, run_id: str) -> Run | None:
        await self._fail()
        return None  # pragma: no cover

    async def list_runs(self, **filters: Any) -> list[Run]:
        await self._fail()
        return []  # pragma: no cover

    async def count_runs(self, *, name: str | None = None) -> dict[RunStatus, int]:
        await self._fail()
        return {}  # pragma: no cover


class TestErrors:
    """Errors are {"error", "code"}; internal messages stay hidden unless exposed."""

    async def test_registry_unavailable_is_503(self) -> None:
        registry = BrokenRegistry(RegistryUnavailableError("test", "10.0.0.7:5432 refused"))
        async with serve(make_app(registry)) as client:
            for response in [await client.get("/runs"), await client.get("/runs/x")]:
                message = assert_error(response, 503, "registry_unavailable")
                assert "10.0.0.7" not in message

    async def test_internal_errors_are_hidden_and_logged(self) -> None:
        registry = BrokenRegistry(RuntimeError("password=hunter2"))
        with structlog.testing.capture_logs() as logs:
            async with serve(make_app(registry)) as client:
                response = await client.get("/runs")
        assert response.json() == {"error": "internal error", "code": "internal_error"}
        assert response.status_code == 500
        assert "hunter2" not in response.text
        assert "Traceback" not in response.text
        (failed,) = [e for e in logs if e["event"] == "api_request_failed"]
        assert failed["path"] == "/runs"
        assert failed["method"] == "GET"
        assert isinstance(failed["exc_info"], RuntimeError)
        assert failed["log_level"] == "error"

    async def test_expose_errors_shows_the_message(self) -> None:
        registry = BrokenRegistry(RuntimeError("password=hunter2"))
        app = make_app(registry, router_options={"expose_errors": True})
        async with serve(app) as client:
            response = await client.get("/runs")
            message = assert_error(response, 500, "internal_error")
            assert message == "RuntimeError: password=hunter2"
            unavailable = BrokenRegistry(RegistryUnavailableError("test", "10.0.0.7 refused"))
            manager_of(app).registry = unavailable
            response = await client.get("/runs/x")
            assert "10.0.0.7" in assert_error(response, 503, "registry_unavailable")

    async def test_app_level_routes_keep_their_own_errors(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/not-a-route")
        assert response.status_code == 404
        assert response.json() == {"detail": "Not Found"}


# -- server-sent events --------------------------------------------------------------------------


class TestEvents:
    """GET /runs/events streams status changes as server-sent events."""

    async def test_streams_a_runs_status_changes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        app = make_app()
        async with AsgiServer(app) as server:
            manager = manager_of(app)
            spy = ListenerSpy(manager, monkeypatch)
            async with server.stream("/runs/events") as events:
                assert events.status == 200
                assert events.headers["content-type"].startswith("text/event-stream")
                assert events.headers["cache-control"] == "no-cache"
                assert await events.next_message() == ": connected"
                assert len(spy.live) == 1
                gate = Gate()
                run = await manager.submit(gate.body, name="streamed")
                received = await events.run_events(run.run_id, 2)
                gate.open("done")
                received += await events.run_events(run.run_id, 1)
            assert [e["status"] for e in received] == ["queued", "running", "completed"]
            assert [e["previous"] for e in received] == [None, "queued", "running"]
            assert received[0]["name"] == "streamed"
            assert spy.live == []  # the listener went with the client

    async def test_times_are_written_as_in_rest(self) -> None:
        # One format for every time in every response: pydantic's JSON (UTC, "Z").
        app = make_app()
        async with AsgiServer(app) as server, server.stream("/runs/events") as events:
            manager = manager_of(app)
            assert await events.next_message() == ": connected"
            run = await manager.submit(quick, name="timed")
            await done(manager, run.run_id)
            streamed = [e["at"] for e in await events.run_events(run.run_id, 3)]
            status, body = await server.get(f"/runs/{run.run_id}")
            assert status == 200
            status, listed = await server.get("/runs")
            assert status == 200

        rest = [body[field] for field in ("created_at", "started_at", "finished_at")]
        assert listed["runs"][0]["created_at"] == body["created_at"]
        for text in streamed + rest:
            assert TIME_FORMAT.fullmatch(text), text
            assert _JSON_TIME.dump_python(datetime.fromisoformat(text), mode="json") == text
        # The stream's times are the moments of the changes the record holds.
        created, started, finished = (datetime.fromisoformat(t) for t in rest)
        queued_at, running_at, completed_at = (datetime.fromisoformat(t) for t in streamed)
        assert created <= queued_at <= running_at <= completed_at
        assert started <= finished

    async def test_heartbeats(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("runtrack._api_events._HEARTBEAT_INTERVAL", 0.01)
        app = make_app()
        async with AsgiServer(app) as server, server.stream("/runs/events") as events:
            assert await events.next_message() == ": connected"
            assert await events.next_message() == ": heartbeat"

    async def test_a_slow_client_loses_the_oldest_events(self) -> None:
        async with BackgroundTaskManager() as manager:
            feed = EventFeed(manager, maxsize=2)
            stream = feed.stream()
            assert await anext(stream) == b": connected\n\n"
            run = await manager.submit(quick, name="flood")  # queued, running, completed
            await done(manager, run.run_id)
            dropped = await anext(stream)
            assert dropped == b'event: dropped\ndata: {"dropped": 1}\n\n'
            statuses = []
            for _ in range(2):
                message = (await anext(stream)).decode()
                statuses.append(json.loads(message.split("data: ", 1)[1])["status"])
            assert statuses == ["running", "completed"]
            assert feed.dropped == 1
            with structlog.testing.capture_logs() as logs:
                await stream.aclose()
            assert [e["event"] for e in logs] == ["sse_events_dropped"]
            gone = await manager.submit(quick)
            await done(manager, gone.run_id)
            assert feed._queue.empty()  # no longer listening

    async def test_streams_end_when_the_app_shuts_down(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Servers wait for open responses before they run the lifespan's shutdown; a
        # server that does it the other way round must not wait for the streams either.
        app = make_app()
        server = AsgiServer(app)
        await server.__aenter__()
        manager = manager_of(app)
        spy = ListenerSpy(manager, monkeypatch)
        async with server.stream("/runs/events") as first, server.stream("/runs/events") as second:
            assert await first.next_message() == ": connected"
            assert await second.next_message() == ": connected"
            run = await manager.submit(quick, name="last")
            await done(manager, run.run_id)
            assert len(await first.run_events(run.run_id, 3)) == 3
            shutdown = asyncio.create_task(server.__aexit__(None, None, None))

            # Ended cleanly, after the events already queued.
            assert await first.rest() == ""
            assert "event: run" in await second.rest()
            await shutdown
            assert spy.live == []

    async def test_streams_end_at_the_servers_exit_signal(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The server's handler (here a stand-in for uvicorn's) still runs, and gets its
        # place back when the app stops.
        received: list[int] = []

        def server_handler(signum: int, frame: object) -> None:
            received.append(signum)

        original = signal.signal(signal.SIGTERM, server_handler)
        try:
            app = make_app()
            async with AsgiServer(app) as server:
                assert signal.getsignal(signal.SIGTERM) is not server_handler
                async with server.stream("/runs/events") as events:
                    assert await events.next_message() == ": connected"
                    signal.raise_signal(signal.SIGTERM)
                    assert await events.rest() == ""
                assert received == [signal.SIGTERM]
                # A client that comes now is told at once that the stream is over.
                async with server.stream("/runs/events") as late:
                    assert await late.rest() == ": connected\n\n"
            assert signal.getsignal(signal.SIGTERM) is server_handler
        finally:
            signal.signal(signal.SIGTERM, original)

    async def test_no_server_handler_no_wrapping(self) -> None:
        original = signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            async with AsgiServer(make_app()):
                assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        finally:
            signal.signal(signal.SIGTERM, original)

    async def test_a_feed_never_streamed_is_closed_with_its_response(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with BackgroundTaskManager() as manager:
            spy = ListenerSpy(manager, monkeypatch)
            response = EventStreamResponse(EventFeed(manager))
            assert len(spy.live) == 1

            async def receive() -> dict[str, Any]:
                return {"type": "http.disconnect"}

            async def send(message: Any) -> None:
                raise OSError("client gone")

            scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}}
            with pytest.raises(ClientDisconnect):
                await response(scope, receive, send)
            assert spy.live == []


# -- authentication, prefixes, OpenAPI -----------------------------------------------------------


async def require_api_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
    if x_api_key != API_KEY:
        raise HTTPException(401, "invalid or missing API key", {"WWW-Authenticate": "APIKey"})


ROUTES = [
    ("GET", "/runs"),
    ("GET", "/runs/events"),
    ("GET", "/runs/r1"),
    ("GET", "/runs/r1/output"),
    ("POST", "/runs/r1/cancel"),
    ("POST", "/runs/r1/requeue"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/managers"),
]


class TestAuth:
    """runs_router(dependencies=[...]) guards every route."""

    async def test_every_route_needs_the_key(self) -> None:
        app = make_app(router_options={"dependencies": [Depends(require_api_key)]})
        async with serve(app) as client:
            for method, path in ROUTES:
                for headers in [{}, {"X-API-Key": "wrong"}]:
                    response = await client.request(method, path, headers=headers)
                    assert response.status_code == 401, (method, path)
                    assert response.json() == {"detail": "invalid or missing API key"}
                if path != "/runs/events":  # a stream never ends: see below
                    response = await client.request(method, path, headers={"X-API-Key": API_KEY})
                    assert response.status_code in {200, 404}, (method, path, response.text)
        async with (
            AsgiServer(app) as server,
            server.stream("/runs/events", {"X-API-Key": API_KEY}) as events,
        ):
            assert events.status == 200
            assert await events.next_message() == ": connected"


class TestPrefixAndOpenAPI:
    """Paths are exactly as documented, movable by a prefix, and fully described."""

    @staticmethod
    def paths(app: FastAPI) -> set[tuple[str, str]]:
        return {
            (method, path)
            for path, operations in app.openapi()["paths"].items()
            for method in operations
        }

    def test_paths(self) -> None:
        expected = {(m.lower(), p.replace("r1", "{run_id}")) for m, p in ROUTES}
        assert self.paths(make_app()) == expected
        moved = {(m, "/api/v1" + p) for m, p in expected}
        assert self.paths(make_app(include_prefix="/api/v1")) == moved
        assert self.paths(make_app(router_options={"prefix": "/api/v1"})) == moved

    async def test_a_prefix_moves_every_path(self) -> None:
        app = make_app(include_prefix="/api")
        async with serve(app) as client:
            run = await manager_of(app).submit(quick)
            await done(manager_of(app), run.run_id)
            assert (await client.get("/api/runs")).json()["count"] == 1
            assert (await client.get(f"/api/runs/{run.run_id}")).status_code == 200
            assert (await client.get("/api/health")).status_code == 200
            for path in ["/runs", f"/runs/{run.run_id}", "/health", "/metrics"]:
                assert (await client.get(path)).status_code == 404

    def test_response_models(self) -> None:
        spec = make_app().openapi()
        paths = spec["paths"]

        def schema(path: str, method: str, status: str) -> str:
            content = paths[path][method]["responses"][status]["content"]
            ref: str = content["application/json"]["schema"]["$ref"]
            return ref.rsplit("/", 1)[1]

        assert schema("/runs", "get", "200") == "RunList"
        assert schema("/runs/{run_id}", "get", "200") == "Run"
        assert schema("/runs/{run_id}/output", "get", "200") == "RunOutput"
        assert schema("/runs/{run_id}/cancel", "post", "200") == "Run"
        assert schema("/health", "get", "200") == "HealthReport"
        assert schema("/health", "get", "503") == "HealthReport"
        assert schema("/metrics", "get", "200") == "ManagerStats"
        managers = paths["/managers"]["get"]["responses"]["200"]["content"]["application/json"]
        assert managers["schema"]["items"]["$ref"].endswith("/ManagerInfo")
        assert schema("/managers", "get", "501") == "ErrorResponse"
        assert schema("/runs/{run_id}", "get", "404") == "ErrorResponse"
        assert schema("/runs/{run_id}/cancel", "post", "409") == "ErrorResponse"
        assert schema("/runs", "get", "503") == "ErrorResponse"
        for path, operations in paths.items():
            for operation in operations.values():
                assert schema_of_422(operation) == "ErrorResponse", path
        events = paths["/runs/events"]["get"]["responses"]["200"]["content"]
        assert list(events) == ["text/event-stream"]
        schemas = spec["components"]["schemas"]
        assert "HTTPValidationError" not in schemas
        statuses = ["queued", "running", "completed", "failed", "cancelled"]
        assert schemas["RunStatus"]["enum"] == statuses
        status_param = next(p for p in paths["/runs"]["get"]["parameters"] if p["name"] == "status")
        items = status_param["schema"]["anyOf"][0]["items"]
        assert items == {"$ref": "#/components/schemas/RunStatus"}
        assert schemas["ErrorResponse"]["required"] == ["error", "code"]

    def test_tags(self) -> None:
        app = make_app(router_options={"tags": ["background"]})
        for operations in app.openapi()["paths"].values():
            for operation in operations.values():
                assert operation["tags"] == ["background"]


def schema_of_422(operation: dict[str, Any]) -> str:
    schema = operation["responses"]["422"]["content"]["application/json"]["schema"]
    name: str = schema["$ref"].rsplit("/", 1)[1] if "$ref" in schema else schema["title"]
    return name


def test_docstring_examples_run() -> None:
    import doctest

    attempted = 0
    with structlog.testing.capture_logs():
        for module in (rtf, runtrack._api_lifespan):  # runs_router; lifespan, get_task_manager
            result = doctest.testmod(module)
            assert result.failed == 0
            attempted += result.attempted
    assert attempted >= 3


@pytest.fixture(autouse=True)
def _no_default_manager_leak() -> Iterator[None]:
    yield
    with pytest.raises(RuntrackError):
        runtrack.get_default_manager()
