"""A manager in a child Python process (``python -c``), which a test watches and stops.

The child opens the registry the test holds (same server, same prefix) from the arguments
`OWNER_BACKENDS` gives, and says what happens as JSON objects, one a line, on stdout:
`CHILD_PRELUDE` routes its structlog events there. `owner_process` starts it and kills it
on exit; `Child.until` waits for a line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

from helpers import SAFETY
from redis_registries import redis_prefix, redis_url
from runtrack import RunRegistry
from sql_registries import postgres_url, sql_registry

__all__ = ["CHILD_START", "OWNER_BACKENDS", "Child", "child_script", "owner_process"]

#: Seconds a child Python process may take to import runtrack and start its runs.
CHILD_START: Final = 60.0

#: A registry in the test process and the arguments (kind, url, prefix) that open it again.
OwnerBackend = Callable[[], AbstractAsyncContextManager[tuple[RunRegistry, list[str]]]]

_PRELUDE: Final = """\
import asyncio, json, logging, sys
import structlog
from runtrack import BackgroundTaskManager, RunStatus

structlog.configure(
    processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    wrapper_class=structlog.make_filtering_bound_logger(logging.{level}),
)
"""


def child_script(body: str, level: str = "WARNING") -> str:
    """``body`` after the imports and a structlog that prints JSON lines from ``level`` up."""
    return _PRELUDE.format(level=level) + textwrap.dedent(body)


@asynccontextmanager
async def _postgres() -> AsyncIterator[tuple[RunRegistry, list[str]]]:
    async with sql_registry(postgres_url()) as registry:
        yield registry, ["sql", postgres_url(), registry.table_prefix]


@asynccontextmanager
async def _redis() -> AsyncIterator[tuple[RunRegistry, list[str]]]:
    from runtrack.registry.redis import RedisRunRegistry

    async with redis_prefix() as prefix, RedisRunRegistry(redis_url(), prefix=prefix) as registry:
        yield registry, ["redis", redis_url(), prefix]


OWNER_BACKENDS: Final[dict[str, OwnerBackend]] = {"postgresql": _postgres, "redis": _redis}


class Child:
    """The child process and what it said so far (``seen``), one JSON object per line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdout is not None
        self.stream = process.stdout
        self.seen: list[dict[str, Any]] = []

    def _said(self, line: bytes) -> dict[str, Any] | None:
        try:
            item: dict[str, Any] = json.loads(line)
        except ValueError:
            return None
        self.seen.append(item)
        return item

    async def until(
        self, found: Callable[[dict[str, Any]], bool], timeout: float = SAFETY
    ) -> dict[str, Any]:
        """The first line, already seen or coming within ``timeout``, that ``found`` accepts."""
        for old in self.seen:
            if found(old):
                return old
        async with asyncio.timeout(timeout):
            while True:
                line = await self.stream.readline()
                assert line, f"the child ended; it said: {self.seen}"
                item = self._said(line)
                if item is not None and found(item):
                    return item

    async def kill(self) -> None:
        """Kill the child, then add what it had said and was not read yet to ``seen``."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        for line in (await self.stream.read()).splitlines():
            self._said(line)


@asynccontextmanager
async def owner_process(script: str, *args: str) -> AsyncIterator[Child]:
    """Run ``python -c script *args``; kill it on exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield Child(process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
