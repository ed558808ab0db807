"""Helpers for the tests of the ``runtrack`` command (``test_cli.py``, ``test_cli_tty.py``).

The command always runs as a subprocess (``python -m runtrack``), against a registry the
test also opens in-process to seed runs and check what the command did. `Backend` is that
registry with the URL and prefix the subprocess is given through its environment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from redis_registries import redis_registry, redis_url
from runtrack import Run, RunRegistry, RunStatus, registry_from_url
from sql_registries import postgres_url, sql_registry

__all__ = [
    "CLI_TIMEOUT",
    "COMMAND",
    "Backend",
    "Result",
    "backend_for",
    "cli_env",
    "run_cli",
    "seed",
]

#: Seconds one command may take before the test fails (a bound, not a timing).
CLI_TIMEOUT: Final = 60.0
#: The command, as the tests start it.
COMMAND: Final = (sys.executable, "-m", "runtrack")


@dataclasses.dataclass
class Backend:
    """A registry the test reads and writes, and how the command reaches the same one."""

    name: str
    url: str
    prefix: str | None
    registry: RunRegistry
    cwd: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a ``runtrack`` subprocess pointed at this registry."""
        return cli_env(self.url, self.prefix, **extra)


def cli_env(url: str, prefix: str | None = None, **extra: str) -> dict[str, str]:
    """The test's environment with the registry variables set (and wide, plain output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTRACK_REGISTRY")}
    env.update(RUNTRACK_REGISTRY_URL=url, COLUMNS="250", NO_COLOR="1", PYTHONUNBUFFERED="1")
    if prefix is not None:
        env["RUNTRACK_REGISTRY_PREFIX"] = prefix
    env.update(extra)
    return env


@asynccontextmanager
async def backend_for(name: str, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh registry of backend ``name`` (sqlite, postgresql, redis), wiped afterwards.

    PostgreSQL and Redis are skipped locally (failed on CI) when unreachable.
    """
    if name == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
        async with registry_from_url(url) as registry:
            yield Backend(name, url, None, registry, tmp_path)
    elif name == "postgresql":
        async with sql_registry(postgres_url()) as sql:
            yield Backend(name, postgres_url(), sql.table_prefix, sql, tmp_path)
    elif name == "redis":
        from runtrack.registry.redis import RedisRunRegistry

        async with redis_registry() as redis:
            assert isinstance(redis, RedisRunRegistry)
            yield Backend(name, redis_url(), redis.prefix, redis, tmp_path)
    else:
        raise ValueError(name)


@dataclasses.dataclass
class Result:
    """What a finished ``runtrack`` subprocess did."""

    code: int
    out: str
    err: str


async def run_cli(
    env: Mapping[str, str], *args: str, cwd: Path | None = None, timeout: float = CLI_TIMEOUT
) -> Result:
    """Run ``python -m runtrack ARGS`` to the end and return its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def seed(
    registry: RunRegistry,
    name: str = "job",
    status: RunStatus = RunStatus.COMPLETED,
    *,
    age: timedelta = timedelta(0),
    **fields: Any,
) -> Run:
    """Record a run that went to ``status`` (through the legal transitions), ``age`` ago."""
    created = datetime.now(UTC) - age
    run = Run(name=name, created_at=created, **fields)
    await registry.add_run(run)
    if status is RunStatus.QUEUED:
        return run
    if status is RunStatus.CANCELLED:
        done = await registry.transition(run.run_id, status, finished_at=created)
        assert done is not None
        return done
    started = await registry.transition(
        run.run_id, RunStatus.RUNNING, started_at=created, owner=fields.get("owner") or "m1"
    )
    assert started is not None
    if status is RunStatus.RUNNING:
        return started
    changes: dict[str, Any] = {"finished_at": created + timedelta(milliseconds=5)}
    if status is RunStatus.FAILED:
        changes.update(error_type="ValueError", error_message="bad input")
    else:
        changes.update(result={"rows": 3})
    done = await registry.transition(run.run_id, status, **changes)
    assert done is not None
    return done
