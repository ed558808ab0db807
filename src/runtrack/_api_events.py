"""``GET /runs/events``: a server-sent-events stream of status changes (see ``runs_router``).

Each client gets an `EventFeed`, a bounded queue fed by a manager listener, streamed by an
`EventStreamResponse`. The feeds of one app's manager are kept in its `Streams`, which
``runtrack.fastapi.lifespan`` closes when the app stops: an open stream would otherwise
keep the server from stopping. No ``from __future__ import annotations`` here: FastAPI
reads the route's annotations, which name the dependency it was given.
"""

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncGenerator
from typing import Annotated, Final

from fastapi import APIRouter, params
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from runtrack._api_errors import error_responses
from runtrack._logging import get_logger
from runtrack._manager import BackgroundTaskManager
from runtrack._models import RunEvent

__all__ = [
    "EVENT_BUFFER",
    "EventFeed",
    "EventStreamResponse",
    "Streams",
    "add_events_route",
    "streams_of",
]

#: Events buffered per SSE client; past it the oldest are dropped (and counted).
EVENT_BUFFER: Final = 1000
#: Seconds between SSE heartbeat comments. Read per connection, so tests may patch it.
_HEARTBEAT_INTERVAL: float = 15.0

_log = get_logger()


class Streams:
    """The open event streams of one app's manager, which all end when the app stops."""

    def __init__(self) -> None:
        self.feeds: set[EventFeed] = set()
        self.closed = False

    def close(self) -> None:
        """End every stream, and those opened from now on at once."""
        self.closed = True
        for feed in list(self.feeds):
            feed.end()


#: The streams of the managers that ``lifespan`` started.
streams_of: "weakref.WeakKeyDictionary[BackgroundTaskManager, Streams]" = (
    weakref.WeakKeyDictionary()
)


class EventFeed:
    """One SSE client's bounded queue of run events, fed by a manager listener."""

    def __init__(
        self,
        manager: BackgroundTaskManager,
        maxsize: int = EVENT_BUFFER,
        streams: Streams | None = None,
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
        """Stop listening to the manager (the events already queued are still streamed)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(ValueError):
                self._manager.remove_listener(self._push)
            if self._streams is not None:
                self._streams.feeds.discard(self)
            if self.dropped:
                _log.warning("sse_events_dropped", dropped=self.dropped)

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """The SSE messages: events, drop counts and heartbeats, until the stream ends."""
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


class EventStreamResponse(StreamingResponse):
    """The ``text/event-stream`` response that streams one `EventFeed`."""

    media_type = "text/event-stream"

    def __init__(self, feed: EventFeed) -> None:
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


def add_events_route(router: APIRouter, manager_dependency: params.Depends) -> None:
    """Serve ``GET /runs/events`` from ``router``.

    Args:
        router: The runs router (its prefix and dependencies apply).
        manager_dependency: ``Depends(get_task_manager)``: the app's manager.
    """

    @router.get(
        "/runs/events",
        response_class=EventStreamResponse,
        status_code=200,  # OpenAPI cannot read it from the response class's __init__
        responses={
            **error_responses(inline=True),
            200: {
                "description": "A stream of ``event: run`` messages whose data is a run event "
                "as JSON; ``event: dropped`` tells how many a slow client missed; comment "
                "lines are heartbeats.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
        },
        summary="Stream status changes",
    )
    async def stream_run_events(
        manager: Annotated[BackgroundTaskManager, manager_dependency],
    ) -> EventStreamResponse:
        """Server-sent events for every status change of the runs this manager executes.

        The stream ends when the app stops (see `lifespan`).
        """
        return EventStreamResponse(EventFeed(manager, streams=streams_of.get(manager)))
