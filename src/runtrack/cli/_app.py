"""What every subcommand shares: the registry it reads, exit codes, and error handling."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click

from runtrack._exceptions import RegistryConfigError, RegistryUnavailableError
from runtrack.registry import RunRegistry, registry_from_url

__all__ = [
    "DEFAULT_REGISTRY_URL",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliState",
    "Fail",
    "mask_url",
    "masked",
    "run_async",
    "state_of",
]

#: The registry used without ``--registry`` or ``RUNTRACK_REGISTRY_URL``.
DEFAULT_REGISTRY_URL: Final = "sqlite+aiosqlite:///runtrack.db"

EXIT_OK: Final = 0
#: The run failed (``runtrack run`` exits with the command's own code instead).
EXIT_FAILED: Final = 1
#: Bad arguments: click's usage message.
EXIT_USAGE: Final = 2
#: The registry cannot be reached or used as configured.
EXIT_UNREACHABLE: Final = 3
#: No run with that id.
EXIT_NOT_FOUND: Final = 4
#: Stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED: Final = 130

T = TypeVar("T")


class Fail(Exception):
    """A one-line error on stderr with an exit code of its own (the group prints it)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def mask_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<malformed URL>"
    if not password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))


@dataclasses.dataclass(frozen=True)
class CliState:
    """The global options, shared by every subcommand through ``ctx.obj``."""

    url: str
    prefix: str | None
    debug: bool
    url_from_command_line: bool = False

    def registry(self) -> RunRegistry:
        """Build the registry (nothing connects until it is used).

        Raises:
            click.BadParameter: the URL or prefix is malformed (exit 2).
            Fail: the backend's extra is not installed (exit 3).
        """
        try:
            return registry_from_url(self.url, prefix=self.prefix)
        except ValueError as exc:
            raise click.BadParameter(masked(str(exc), self.url), param_hint="--registry") from None
        except ImportError as exc:
            raise Fail(masked(str(exc), self.url), EXIT_UNREACHABLE) from None

    @property
    def where(self) -> str:
        """The registry URL as it may be shown: no password."""
        return mask_url(self.url)


def masked(text: str, url: str) -> str:
    """``text`` with the password of ``url`` blanked out wherever it appears."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(password, "***") if password else text


def state_of(ctx: click.Context) -> CliState:
    """The `CliState` the group stored on the context."""
    state = ctx.find_object(CliState)
    if state is None:  # a subcommand invoked without the group, as in some tests
        state = CliState(url=DEFAULT_REGISTRY_URL, prefix=None, debug=False)
    return state


def configure_logging(debug: bool) -> None:
    """Quiet runtrack's own log events (the CLI reports what matters) unless ``--debug``."""
    if debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    else:
        logging.getLogger("runtrack").setLevel(logging.CRITICAL + 1)


def run_async(state: CliState, main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` on a fresh event loop, turning registry failures into exit codes.

    Raises:
        Fail: the registry is unreachable or refuses its configuration (exit 3).
    """

    async def guarded() -> T:
        try:
            return await main()
        finally:
            await _driver_threads_done()

    try:
        return asyncio.run(guarded())
    except (RegistryUnavailableError, RegistryConfigError) as exc:
        _unreachable(state, exc)


async def _driver_threads_done(timeout: float = 1.0) -> None:
    """Wait (bounded) for aiosqlite's worker threads to hand their last results to the loop.

    When a SQLite connection fails to open, aiosqlite stops its worker thread without
    waiting for it; if the loop closed first, that thread would print a traceback
    ("Event loop is closed") after the one-line error.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(  # noqa: ASYNC110 - threads set no event
        "_connection_worker_thread" in thread.name for thread in threading.enumerate()
    ):
        await asyncio.sleep(0.01)


def _unreachable(state: CliState, exc: Exception) -> NoReturn:
    if state.debug:
        traceback.print_exception(exc)
    message = masked(str(exc), state.url)
    raise Fail(f"{state.where}: {message}", EXIT_UNREACHABLE) from None
