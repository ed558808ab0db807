"""`Notifying`: registries that push cancels and new-work announcements to managers.

PostgreSQL (``LISTEN/NOTIFY``, see ``_notify_pg``) and Redis (pub/sub, see
``_notify_redis``) push; on SQLite and MariaDB the SQL registry's `Notifying.listen`
returns a listener that never calls back, and managers learn of cancels by polling every
``poll_interval``. A notification is a hint, never the only way: one lost while the
listener's connection was cut is made up by the next poll.

`Supervisor` is what both pushing backends share: it keeps one listening session open,
opens a new one with a growing delay when it is lost, and logs once when it starts failing
and once when it works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Collection
from typing import Final, Protocol, runtime_checkable

from runtrack._logging import get_logger

__all__ = [
    "NOTIFY_PAYLOAD_LIMIT",
    "InertListener",
    "ListenerKeeper",
    "NotificationListener",
    "Notifying",
    "Session",
    "Supervisor",
    "check_task_names",
    "short_channel",
]

#: Bytes a notification's payload may hold (PostgreSQL refuses 8000 and more).
NOTIFY_PAYLOAD_LIMIT: Final = 7999
#: Bytes of a PostgreSQL channel name (an identifier: NAMEDATALEN - 1).
_CHANNEL_LIMIT: Final = 63
#: Delays between attempts to listen again, in seconds: doubled from the first to the last.
_RETRY_FIRST: Final = 0.1
_RETRY_LAST: Final = 5.0

_log = get_logger(component="notifications")


@runtime_checkable
class NotificationListener(Protocol):
    """**Protocol:** what `Notifying.listen` returns: listening until `aclose`."""

    async def aclose(self) -> None:
        """Stop listening and release the connection. Safe to call twice."""
        ...


@runtime_checkable
class Notifying(Protocol):
    """**Protocol:** a registry that pushes cancels and new-work announcements.

    PostgreSQL (``LISTEN/NOTIFY``) and Redis (pub/sub) push. The SQL registry on SQLite or
    MariaDB has the methods too, but its listener never calls back and its announcements go
    nowhere: managers there poll every ``poll_interval``. Notifications are hints: one may
    be lost (the listener's connection cut), so whoever listens also polls, more rarely.
    """

    async def listen(
        self,
        owner: str,
        *,
        on_cancel: Callable[[str], None],
        on_new_work: Callable[[str], None],
    ) -> NotificationListener:
        """Listen for the cancels of ``owner``'s runs and for new-work announcements.

        ``on_cancel(run_id)`` is called when another process records CANCELLED a run whose
        ``owner`` is ``owner``; ``on_new_work(task)`` for each announcement (see
        `announce_new_work`). Both are called on the event loop and must not block. A lost
        connection is opened again with a growing delay (logged once); notifications sent
        meanwhile are lost.
        """
        ...

    async def announce_new_work(self, tasks: Collection[str]) -> None:
        """Tell every listener, one announcement per distinct task name, that work is queued.

        Raises:
            ValueError: a task name longer than `NOTIFY_PAYLOAD_LIMIT` bytes in UTF-8.
            RegistryUnavailableError: the backend could not be reached.
        """
        ...


def check_task_names(tasks: Collection[str]) -> list[str]:
    """The distinct names of ``tasks``, in order; ValueError for one too long to send."""
    names = list(dict.fromkeys(tasks))
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"task names are str, got {name!r}")
        if len(name.encode("utf-8", "surrogatepass")) > NOTIFY_PAYLOAD_LIMIT:
            raise ValueError(
                f"task name of {len(name)} characters is too long to announce: at most "
                f"{NOTIFY_PAYLOAD_LIMIT} bytes in UTF-8; use a shorter name"
            )
    return names


def short_channel(name: str) -> str:
    """``name`` if it fits a PostgreSQL channel name, else its start and a digest of it."""
    raw = name.encode()
    if len(raw) <= _CHANNEL_LIMIT:
        return name
    digest = hashlib.blake2b(raw, digest_size=8).hexdigest()
    return raw[:40].decode(errors="ignore") + "#" + digest


class InertListener:
    """The listener of a registry that cannot push: it never calls back."""

    async def aclose(self) -> None:
        """Nothing to release."""


class Session(Protocol):
    """One open listening connection (see `Supervisor`)."""

    async def lost(self) -> None:
        """Return when the connection is lost (or raise)."""
        ...

    async def aclose(self) -> None:
        """Release the connection; never raises."""
        ...


class Supervisor:
    """Keeps a listening `Session` open: opens it again, with backoff, when it is lost."""

    def __init__(self, open_session: Callable[[], Awaitable[Session]], where: str) -> None:
        self._open = open_session
        self._where = where
        self._session: Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._closed = False
        #: Set while a session is open (tests wait on it after a cut).
        self.connected = asyncio.Event()

    async def start(self) -> Supervisor:
        """Open the first session here (so that nothing sent after is missed), then watch."""
        await self._attempt()
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def aclose(self) -> None:
        """Stop watching and close the session. Safe to call twice."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop()

    async def _attempt(self) -> bool:
        try:
            self._session = await self._open()
        except Exception as exc:  # the server may be away: try again later
            if not self._failing:
                self._failing = True
                _log.warning(
                    "notifications_failed",
                    where=self._where,
                    error=f"{type(exc).__name__}: {exc}",
                    detail="cancels are learned by polling meanwhile; retried with backoff, "
                    "logged again when it works",
                )
            return False
        if self._failing:
            self._failing = False
            _log.warning("notifications_recovered", where=self._where)
        self.connected.set()
        return True

    async def _watch(self) -> None:
        delay = _RETRY_FIRST
        while not self._closed:
            session = self._session
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.lost()
                await self._drop()
                if not self._failing:
                    self._failing = True
                    _log.warning(
                        "notifications_failed",
                        where=self._where,
                        error="connection lost",
                        detail="cancels are learned by polling meanwhile; listening "
                        "again with backoff, logged again when it works",
                    )
                delay = _RETRY_FIRST
            await asyncio.sleep(delay)
            if not await self._attempt():
                delay = min(delay * 2, _RETRY_LAST)

    async def _drop(self) -> None:
        self.connected.clear()
        session, self._session = self._session, None
        if session is not None:
            await asyncio.shield(session.aclose())


class _Listener:
    """What a pushing registry's `Notifying.listen` returns."""

    def __init__(self, supervisor: Supervisor, listeners: set[_Listener]) -> None:
        self.supervisor = supervisor
        self._listeners = listeners

    async def aclose(self) -> None:
        self._listeners.discard(self)
        await self.supervisor.aclose()


class ListenerKeeper:
    """Mixin of a pushing registry: keeps its open listeners, closed with the registry."""

    @property
    def _listeners(self) -> set[_Listener]:
        listeners: set[_Listener] | None = self.__dict__.get("_notify_listeners")
        if listeners is None:  # a mixin: the registry's __init__ does not know about it
            listeners = self.__dict__["_notify_listeners"] = set()
        return listeners

    async def _open_listener(
        self, open_session: Callable[[], Awaitable[Session]], where: str
    ) -> NotificationListener:
        listener = _Listener(await Supervisor(open_session, where).start(), self._listeners)
        self._listeners.add(listener)
        return listener

    async def _close_listeners(self) -> None:
        """Close the listeners their callers left open (before the connections close)."""
        for listener in list(self._listeners):
            await listener.aclose()
