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

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations at
# runtime, and those of functions nested in runs_router() must stay evaluable.

import asyncio
import contextlib
import inspect
import json
import signal
import threading
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, ClassVar, Final, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from runtrack._api_managers import add_managers_route
from runtrack._api_requeue import add_requeue_route
from runtrack._background import get_default_manager, set_default_manager
from runtrack._dashboard import add_dashboard_routes
from runtrack._exceptions import RegistryUnavailableError, RuntrackError
from runtrack._logging import get_logger
from runtrack._manager import BackgroundTaskManager
from runtrack._models import OutputChunk, Run, RunEvent
from runtrack._stats import ManagerStats
from runtrack._status import RunStatus
from runtrack._system import SystemStats, system_stats
from runtrack.registry._url import registry_from_url
from runtrack.registry.base import RunRegistry

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

#: Where the lifespan stores the manager: ``app.state`` and the lifespan state.
STATE_KEY: Final = "runtrack_manager"
#: Seconds /health waits for the registry before reporting it unavailable.
HEALTH_TIMEOUT: Final = 2.0
#: Events buffered per SSE client; past it the oldest are dropped (and counted).
EVENT_BUFFER: Final = 1000
#: The signals a server stops on (uvicorn, hypercorn, gunicorn's workers): event streams
#: end when one arrives, so the server is not left waiting for them to close.
_EXIT_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name)
)
#: Seconds between SSE heartbeat comments. Read per connection, so tests may patch it.
_HEARTBEAT_INTERVAL: float = 15.0

_log = get_logger()

AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]
"""An app's own lifespan: ``app -> async context manager`` yielding None or a state dict."""


# -- lifespan and dependency -------------------------------------------------------------------


def lifespan(
    registry: RunRegistry | str | None = None,
    *,
    app_lifespan: AppLifespan | None = None,
    grace: float | None = None,
    **manager_options: Any,
) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]:
    """Build a FastAPI lifespan that owns one `BackgroundTaskManager` for the app.

    At startup a manager is created and started, stored on ``app.state.runtrack_manager``
    and in the lifespan state (``request.state.runtrack_manager``), and made the default
    manager of module-level ``@runtrack.background`` functions. At shutdown it stops
    accepting runs, lets running ones finish for ``grace`` seconds, cancels the rest
    (recorded CANCELLED) and flushes every write. Each startup gets a fresh manager, so
    the lifespan can serve an app started several times (as in tests).

    Event streams (``GET /runs/events``, which the dashboard reads) end when the app
    stops: when the server receives SIGINT or SIGTERM (uvicorn waits for open responses
    to finish before it runs the lifespan's shutdown, so a stream that never ended would
    hold it for ever), and at the latest when this lifespan exits. To see the signal the
    lifespan wraps the handler the server installed, which still runs; a server started
    outside the main thread has no signal handlers, and its streams end at shutdown.

    Args:
        registry: A registry, which stays open (you own it); a URL for `registry_from_url`,
            whose registry is closed at shutdown; or None for a fresh in-memory one.
        app_lifespan: The app's own lifespan, run inside this one: the manager exists
            during its startup and its shutdown, and the state it yields is merged in.
        grace: Seconds shutdown waits for runs; default the manager's ``shutdown_grace``.
        **manager_options: Passed to `BackgroundTaskManager` (``max_concurrency``,
            ``group_limits``, ``default_timeout``, ...).

    Returns:
        ``app -> async context manager``, for ``FastAPI(lifespan=...)``.

    Raises:
        TypeError: an unknown manager option or a registry of the wrong type.
        ValueError: a negative ``grace``.

    Example:
        >>> import asyncio
        >>> from fastapi import FastAPI
        >>> from runtrack.fastapi import lifespan
        >>> app = FastAPI(lifespan=lifespan(max_concurrency=10))
        >>> async def main() -> str:
        ...     async with app.router.lifespan_context(app):  # what the server runs
        ...         return repr(app.state.runtrack_manager).split()[1]
        >>> asyncio.run(main())
        'running'
    """
    # Mistakes surface where the app is built, not at its first startup.
    try:
        inspect.signature(BackgroundTaskManager).bind(None, **manager_options)
    except TypeError as exc:
        raise TypeError(f"lifespan(): {exc} (options go to BackgroundTaskManager)") from None
    if registry is not None and not isinstance(registry, str | RunRegistry):
        raise TypeError(
            "lifespan(registry=...) takes a runtrack.RunRegistry, a registry URL or None, "
            f"got {type(registry).__name__}"
        )
    if grace is not None and not grace >= 0:
        raise ValueError(f"lifespan(grace=...) must be >= 0 seconds, got {grace!r}")

    @asynccontextmanager
    async def run_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            if isinstance(registry, str):
                owned = registry_from_url(registry)
                stack.push_async_callback(owned.aclose)
                manager = BackgroundTaskManager(owned, **manager_options)
            else:
                manager = BackgroundTaskManager(registry, **manager_options)
            await stack.enter_async_context(manager)
            # Runs last of the two: the default points at the manager until it has closed.
            stack.callback(_restore_default, manager, _current_default())
            stack.push_async_callback(manager.shutdown, grace)
            set_default_manager(manager)
            app.state.runtrack_manager = manager
            stack.callback(_forget_manager, app, manager)
            state: dict[str, Any] = {STATE_KEY: manager}
            if app_lifespan is not None:
                theirs = await stack.enter_async_context(app_lifespan(app))
                if theirs is not None:
                    state = {**theirs, STATE_KEY: manager}
            # Pushed last, so the streams end first: the server waits for them.
            streams = _Streams()
            _streams_of[manager] = streams
            stack.callback(streams.close)
            stack.enter_context(_on_exit_signals(streams))
            _log.debug("fastapi_lifespan_started", owner=manager.owner)
            yield state

    return run_lifespan


def _current_default() -> BackgroundTaskManager | None:
    try:
        return get_default_manager()
    except RuntrackError:
        return None


def _restore_default(
    manager: BackgroundTaskManager, previous: BackgroundTaskManager | None
) -> None:
    if _current_default() is manager:
        set_default_manager(previous)


def _forget_manager(app: Starlette, manager: BackgroundTaskManager) -> None:
    if getattr(app.state, STATE_KEY, None) is manager:
        delattr(app.state, STATE_KEY)


@contextlib.contextmanager
def _on_exit_signals(streams: "_Streams") -> Iterator[None]:
    """Close ``streams`` on SIGINT/SIGTERM, then call the handler that was there before.

    Only a handler the server installed is wrapped (one that is a Python callable), and
    only in the main thread, where signal handlers live. It is put back at exit unless
    someone replaced ours in the meantime.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous: dict[int, Callable[[int, Any], Any]] = {}

    def handle(signum: int, frame: Any) -> None:
        # A signal handler runs between two bytecodes of the loop's own thread: hand the
        # work to the loop the thread-safe way.
        loop.call_soon_threadsafe(streams.close)
        previous[signum](signum, frame)

    for sig in _EXIT_SIGNALS:
        handler = signal.getsignal(sig)
        if callable(handler):
            previous[sig] = handler
            signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is handle:
                signal.signal(sig, handler)


def get_task_manager(request: Request) -> BackgroundTaskManager:
    """The app's manager, as a FastAPI dependency (`TaskManager` is the annotation for it).

    Example:
        >>> from fastapi import FastAPI
        >>> from runtrack.fastapi import TaskManager, lifespan
        >>> async def make_report(month: str) -> str:
        ...     return f"report-{month}.pdf"
        >>> app = FastAPI(lifespan=lifespan())
        >>> @app.post("/reports/{month}")
        ... async def start_report(month: str, manager: TaskManager) -> dict[str, str]:
        ...     return {"run_id": manager.start_call(make_report, month)}

    Raises:
        RuntrackError: the app has no manager (its lifespan is not `lifespan`, or the app
            has not started).
    """
    manager = getattr(request.state, STATE_KEY, None) or getattr(request.app.state, STATE_KEY, None)
    if not isinstance(manager, BackgroundTaskManager):
        raise RuntrackError(
            "this app has no runtrack manager: pass lifespan=runtrack.fastapi.lifespan(...) "
            "to FastAPI(...), and start the app (use TestClient as a context manager)"
        )
    return manager


TaskManager = Annotated[BackgroundTaskManager, Depends(get_task_manager)]
"""Annotation for a handler parameter that receives the app's manager."""


# -- response models ---------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    """The body of every error the runs router returns."""

    error: str = Field(description="What went wrong, for people.")
    code: str = Field(
        description="For programs: run_not_found, not_found (a dashboard file), "
        "run_finished, invalid_filter, invalid_request, registry_unavailable, "
        "managers_unsupported or internal_error.",
        examples=["run_not_found"],
    )


class RunList(BaseModel):
    """A page of runs, newest first."""

    runs: list[Run]
    limit: int
    offset: int
    count: int = Field(description="Runs on this page.")
    next_offset: int | None = Field(description="The offset of the next page; None if last.")


class RunOutput(BaseModel):
    """Output chunks of a run, oldest first."""

    run_id: str
    chunks: list[OutputChunk]
    next_since: int = Field(description="Pass as ``since`` to get the chunks after these.")


class HealthReport(BaseModel):
    """Whether the manager runs and the registry answers."""

    status: Literal["ok", "degraded"]
    manager: str = Field(description="The manager's state: created, running, closing, closed.")
    owner: str
    registry: Literal["ok", "unavailable"]
    registry_latency_ms: float | None = Field(description="How long the registry took.")
    active_runs: int = Field(description="Runs queued or running in this manager.")
    system: SystemStats = Field(description="Load and memory of the machine the manager runs on.")


# -- errors ------------------------------------------------------------------------------------


class _ApiError(Exception):
    """An error with its HTTP status and machine code, rendered as `ErrorResponse`."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


def _error(status_code: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status_code)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    problems = []
    from_query = True
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        from_query = from_query and bool(loc) and loc[0] == "query"
        where = ".".join(loc[1:] if len(loc) > 1 else loc)
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else error["msg"])
    code = "invalid_filter" if from_query else "invalid_request"
    return _error(422, code, "; ".join(problems) or "invalid request")


class _RunsRoute(APIRoute):
    """Renders every failure of a runs endpoint as ``{"error": ..., "code": ...}``.

    An ``APIRouter`` cannot register exception handlers, so the route does it: the
    router then works with a plain ``app.include_router``. `HTTPException` from the app's
    own dependencies (authentication) passes through to the app's handlers.
    """

    expose_errors: ClassVar[bool] = False

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        expose = self.expose_errors

        async def handle(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except _ApiError as exc:
                return _error(exc.status_code, exc.code, exc.message)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except HTTPException:
                raise
            except RegistryUnavailableError as exc:
                _log.warning(
                    "api_registry_unavailable", method=request.method, path=request.url.path,
                    error=str(exc),
                )  # fmt: skip
                message = str(exc) if expose else "the run registry is unavailable: retry later"
                return _error(503, "registry_unavailable", message)
            except Exception as exc:
                _log.error(
                    "api_request_failed", method=request.method, path=request.url.path,
                    exc_info=exc,
                )  # fmt: skip
                message = f"{type(exc).__name__}: {exc}" if expose else "internal error"
                return _error(500, "internal_error", message)
            return response

        return handle


def _errors(*codes: int, inline: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these codes, and 422 and 500, which any endpoint may return.

    With ``inline``, the schema is written out instead of given as a model: FastAPI would
    describe a model with the route's own media type, which for the event stream is not
    JSON.
    """
    descriptions = {
        404: "No run with this id.",
        409: "The run has already finished.",
        501: "The registry keeps no managers (managers_unsupported).",
        422: "A filter or parameter is invalid (invalid_filter for query parameters).",
        500: "An unexpected error (its message is hidden unless expose_errors=True).",
        503: "The run registry cannot be reached.",
    }
    if inline:
        schema = {"application/json": {"schema": ErrorResponse.model_json_schema()}}
        return {
            c: {"description": descriptions[c], "content": schema}
            for c in sorted({*codes, 422, 500})
        }
    return {
        c: {"model": ErrorResponse, "description": descriptions[c]}
        for c in sorted({*codes, 422, 500})
    }


# -- server-sent events ------------------------------------------------------------------------


class _Streams:
    """The open event streams of one app's manager, which all end when the app stops."""

    def __init__(self) -> None:
        self.feeds: set[_EventFeed] = set()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for feed in list(self.feeds):
            feed.end()


#: The streams of the managers that `lifespan` started.
_streams_of: "weakref.WeakKeyDictionary[BackgroundTaskManager, _Streams]" = (
    weakref.WeakKeyDictionary()
)


class _EventFeed:
    """One SSE client's bounded queue of run events, fed by a manager listener."""

    def __init__(
        self,
        manager: BackgroundTaskManager,
        maxsize: int = EVENT_BUFFER,
        streams: _Streams | None = None,
    ) -> None:
        self._manager = manager
        # None ends the stream.
        self._queue: asyncio.Queue[RunEvent | None] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._unreported = 0
        self._closed = False
        self._streams = streams
        manager.add_listener(self._push)
        if streams is not None:
            streams.feeds.add(self)
            if streams.closed:
                self.end()

    def _push(self, event: RunEvent | None) -> None:
        if self._queue.full():
            # A slow client loses the oldest events, never the manager's time or memory.
            self._queue.get_nowait()
            self.dropped += 1
            self._unreported += 1
        self._queue.put_nowait(event)

    def end(self) -> None:
        """End the stream after the events already queued: the app is stopping."""
        if not self._closed:
            self._push(None)
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(ValueError):
                self._manager.remove_listener(self._push)
            if self._streams is not None:
                self._streams.feeds.discard(self)
            if self.dropped:
                _log.warning("sse_events_dropped", dropped=self.dropped)

    async def stream(self) -> AsyncGenerator[bytes, None]:
        heartbeat = _HEARTBEAT_INTERVAL
        try:
            yield b": connected\n\n"
            while True:
                try:
                    async with asyncio.timeout(heartbeat):
                        event = await self._queue.get()
                except TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
                if self._unreported:
                    dropped, self._unreported = self._unreported, 0
                    yield f'event: dropped\ndata: {{"dropped": {dropped}}}\n\n'.encode()
                if event is None:
                    return
                data = json.dumps(event.as_dict(), separators=(",", ":"))
                yield f"event: run\ndata: {data}\n\n".encode()
        finally:
            self.close()


class _EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, feed: _EventFeed) -> None:
        self._feed = feed
        super().__init__(
            feed.stream(),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # The stream may be abandoned at a ``yield`` when the client goes away.
            self._feed.close()


# -- the router --------------------------------------------------------------------------------


def _parse_tags(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    tags: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise _ApiError(422, "invalid_filter", f"tag: expected key:value, got {item[:100]!r}")
        if tags.get(key, value) != value:
            raise _ApiError(422, "invalid_filter", f"tag: key {key[:100]!r} given twice")
        tags[key] = value
    return tags


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

    class RunsRoute(_RunsRoute):
        pass

    RunsRoute.expose_errors = expose_errors
    router = APIRouter(
        prefix=prefix,
        tags=list(tags),
        dependencies=list(dependencies or ()),
        route_class=RunsRoute,
    )

    async def get_or_404(manager: BackgroundTaskManager, run_id: str) -> Run:
        run = await manager.registry.get_run(run_id)
        if run is None:
            raise _ApiError(404, "run_not_found", f"no run {run_id[:200]!r}")
        return run

    # Declared before /runs/{run_id}, which would take "ui" or "events" for a run id.
    if dashboard:
        add_dashboard_routes(router)

    @router.get(
        "/runs/events",
        response_class=_EventStreamResponse,
        status_code=200,  # OpenAPI cannot read it from the response class's __init__
        responses={
            **_errors(inline=True),
            200: {
                "description": "A stream of ``event: run`` messages whose data is a run event "
                "as JSON; ``event: dropped`` tells how many a slow client missed; comment "
                "lines are heartbeats.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
        },
        summary="Stream status changes",
    )
    async def stream_run_events(manager: TaskManager) -> _EventStreamResponse:
        """Server-sent events for every status change of the runs this manager executes.

        The stream ends when the app stops (see `lifespan`).
        """
        return _EventStreamResponse(_EventFeed(manager, streams=_streams_of.get(manager)))

    @router.get("/runs", responses=_errors(503), summary="List runs")
    async def list_runs(
        manager: TaskManager,
        status: Annotated[
            list[RunStatus] | None, Query(description="Only these statuses (repeatable).")
        ] = None,
        name: Annotated[str | None, Query(description="Only runs of this name.")] = None,
        group: Annotated[str | None, Query(description="Only runs of this group.")] = None,
        tag: Annotated[
            list[str] | None,
            Query(description="Only runs with this tag, as key:value (repeatable)."),
        ] = None,
        dead: Annotated[
            bool | None,
            Query(description="Only dead letters (true) or only the other runs (false)."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
        offset: Annotated[int, Query(ge=0, description="Runs to skip.")] = 0,
    ) -> RunList:
        """Runs matching every filter, newest first."""
        tag_filter = _parse_tags(tag)
        # One more than asked tells whether a next page exists.
        runs = await manager.registry.list_runs(
            status=status or None, name=name, group=group, tags=tag_filter, dead=dead,
            limit=limit + 1, offset=offset,
        )  # fmt: skip
        more = len(runs) > limit
        runs = runs[:limit]
        return RunList(
            runs=runs,
            limit=limit,
            offset=offset,
            count=len(runs),
            next_offset=offset + limit if more else None,
        )

    @router.get("/runs/{run_id}", responses=_errors(404, 503), summary="Get a run")
    async def get_run(manager: TaskManager, run_id: str) -> Run:
        """One run, as the registry records it."""
        return await get_or_404(manager, run_id)

    @router.get("/runs/{run_id}/output", responses=_errors(404, 503), summary="Get output")
    async def get_run_output(
        manager: TaskManager,
        run_id: str,
        since: Annotated[int, Query(ge=0, description="Only chunks with a higher seq.")] = 0,
        limit: Annotated[
            int | None, Query(ge=1, le=10_000, description="At most this many chunks.")
        ] = None,
    ) -> RunOutput:
        """Output chunks with ``seq > since``, oldest first."""
        chunks = await manager.registry.get_output(run_id, since=since, limit=limit)
        if not chunks:
            await get_or_404(manager, run_id)
        return RunOutput(
            run_id=run_id, chunks=chunks, next_since=chunks[-1].seq if chunks else since
        )

    @router.post("/runs/{run_id}/cancel", responses=_errors(404, 409, 503), summary="Cancel a run")
    async def cancel_run(manager: TaskManager, run_id: str) -> Run:
        """Cancel a queued or running run (of any manager sharing the registry)."""
        cancelled = await manager.cancel_task(run_id)
        run = await get_or_404(manager, run_id)
        if not cancelled:
            state = f"already {run.status.value}" if run.is_finished else "finishing"
            raise _ApiError(409, "run_finished", f"run {run_id[:200]!r} is {state}")
        return run

    @router.get(
        "/health",
        responses={**_errors(), 503: {"model": HealthReport, "description": "Degraded."}},
        summary="Health",
    )
    async def health(manager: TaskManager, response: Response) -> HealthReport:
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

    @router.get("/metrics", responses=_errors(), summary="Metrics")
    async def metrics(manager: TaskManager) -> ManagerStats:
        """Counts by status, limits and per-name outcomes of this manager.

        ``queue_depth`` is read from the registry for the answer (QUEUED runs of every
        manager, by priority); if it cannot be, the figure last read is given.
        """
        with contextlib.suppress(RuntrackError):
            await manager.queue_depth()
        return manager.stats()

    add_managers_route(router, Depends(get_task_manager), _errors(501, 503))
    add_requeue_route(router, Depends(get_task_manager), _errors(404, 409, 503))
    return router
