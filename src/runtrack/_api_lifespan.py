"""One manager per app: the FastAPI lifespan that owns it, and the dependency that finds it.

`lifespan` starts the app's `BackgroundTaskManager` at startup, makes it the default
manager of ``@runtrack.background`` functions, and shuts it down gracefully at shutdown;
it also ends the app's event streams (`Streams`) when the server is told to stop.
`get_task_manager` and the `TaskManager` annotation hand the manager to handlers. All
three are public in ``runtrack.fastapi``, which documents them.
"""

import asyncio
import contextlib
import inspect
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, Final

from fastapi import Depends, Request
from starlette.applications import Starlette

from runtrack._api_events import Streams, streams_of
from runtrack._background import get_default_manager, set_default_manager
from runtrack._exceptions import RuntrackError
from runtrack._logging import get_logger
from runtrack._manager import BackgroundTaskManager
from runtrack.registry._url import registry_from_url
from runtrack.registry.base import RunRegistry

__all__ = ["STATE_KEY", "AppLifespan", "TaskManager", "get_task_manager", "lifespan"]

#: Where the lifespan stores the manager: ``app.state`` and the lifespan state.
STATE_KEY: Final = "runtrack_manager"
#: The signals a server stops on (uvicorn, hypercorn, gunicorn's workers): event streams
#: end when one arrives, so the server is not left waiting for them to close.
_EXIT_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name)
)

_log = get_logger()

AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]
"""An app's own lifespan: ``app -> async context manager`` yielding None or a state dict."""


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
            streams = Streams()
            streams_of[manager] = streams
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
def _on_exit_signals(streams: Streams) -> Iterator[None]:
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
