"""The ``runtrack`` command in a pseudo-terminal (pexpect): what a person at a shell sees.

``watch`` redraws its table until Ctrl-C, ``output --follow`` prints output as it is
recorded and returns when the run ends, and Ctrl-C of ``runtrack run`` cancels the run.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pexpect
import psutil

from cli_helpers import COMMAND, Backend, backend_for, seed
from helpers import SAFETY
from runtrack import RunStatus
from runtrack._models import utcnow

#: Seconds one expected screen may take to appear (a bound: a busy machine is slow).
EXPECT: float = SAFETY * 3


@contextmanager
def terminal(backend: Backend, *args: str) -> Iterator[pexpect.spawn[str]]:
    """``python -m runtrack ARGS`` in a 120x40 pseudo-terminal, killed if still alive."""
    env = backend.env(TERM="xterm-256color")
    for name in ("COLUMNS", "NO_COLOR"):
        env.pop(name, None)
    child = pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], *args],
        env=env,
        cwd=str(backend.cwd),
        dimensions=(40, 120),
        encoding="utf-8",
        codec_errors="replace",
        timeout=EXPECT,
    )
    try:
        yield child
    finally:
        if child.isalive():
            child.terminate(force=True)
        child.close()


async def expect(child: pexpect.spawn[str], pattern: Any) -> str:
    """Wait (off the event loop) for ``pattern`` on the terminal; return what matched."""
    await asyncio.to_thread(child.expect, pattern)
    return str(child.after)


async def end(child: pexpect.spawn[str]) -> int:
    """Wait for the program to exit and return its exit status."""
    await asyncio.to_thread(child.expect, pexpect.EOF)
    await asyncio.to_thread(child.wait)
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return int(child.exitstatus)


async def test_watch_redraws_until_ctrl_c(cli_backend: Backend) -> None:
    registry = cli_backend.registry
    running = await seed(
        registry, "train", RunStatus.RUNNING, progress=0.25, progress_message="epoch 1/4"
    )
    await seed(registry, "export", RunStatus.QUEUED)
    await seed(registry, "old", RunStatus.FAILED)

    with terminal(cli_backend, "watch", "--interval", "0.2") as child:
        await expect(child, re.escape(running.run_id[:8]))
        await expect(child, "25%")
        await expect(child, "epoch 1/4")
        # The counts by status are in the header; the finished run is not listed.
        await expect(child, r"failed 1")
        assert "old" not in str(child.before)

        await registry.update_run(running.run_id, progress=0.75, progress_message="epoch 3/4")
        await expect(child, "epoch 3/4")
        await expect(child, "75%")

        await registry.transition(running.run_id, RunStatus.COMPLETED, finished_at=utcnow())
        await expect(child, "completed 1")

        child.sendintr()
        assert await end(child) == 0


async def test_output_follow_tails_until_the_run_ends(cli_backend: Backend) -> None:
    registry = cli_backend.registry
    run = await seed(registry, "cmd", RunStatus.RUNNING)
    await registry.append_output(run.run_id, [("stdout", "first line\r\n")])

    with terminal(cli_backend, "output", run.run_id, "--follow") as child:
        await expect(child, "first line")
        await registry.append_output(run.run_id, [("stderr", "second line\n")])
        await expect(child, "second line")
        await registry.append_output(run.run_id, [("stdout", "last line\n")])
        await registry.transition(run.run_id, RunStatus.COMPLETED, finished_at=utcnow())
        await expect(child, "last line")

        assert await end(child) == 0


async def test_run_shows_a_status_line_and_ctrl_c_cancels(sqlite_cli: Backend) -> None:
    script = "sleep 300 & echo pids $$ $!; wait"

    with terminal(sqlite_cli, "run", "--name", "sleeper", "--", "sh", "-c", script) as child:
        found = await expect(child, r"pids (\d+) (\d+)")
        pids = [int(pid) for pid in found.split()[1:]]
        # The status line on stderr (a terminal here) names the run and follows its status.
        await expect(child, r"sleeper · run [0-9a-f-]{36} · [^·]+ · running")
        assert all(psutil.pid_exists(pid) for pid in pids)

        child.sendintr()
        await expect(child, "cancelled run")
        assert await end(child) == 130

    [run] = await sqlite_cli.registry.list_runs(name="sleeper")
    assert run.status is RunStatus.CANCELLED
    for pid in pids:
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting for its parent."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_run_ends_with_a_summary_line(sqlite_cli: Backend) -> None:
    with terminal(sqlite_cli, "run", "--", "sh", "-c", "echo hello; exit 2") as child:
        await expect(child, "hello")
        await expect(child, r"run [0-9a-f-]{36} failed in \S+ \(exit 2\)")

        assert await end(child) == 2


async def test_demo_draws_its_table_live(tmp_path: Path) -> None:
    async with backend_for("sqlite", tmp_path) as backend:
        with terminal(backend, "demo") as child:
            await expect(child, r"runtrack demo +\d+\.\ds")
            await expect(child, "RUN +NAME +GROUP")
            await expect(child, "waiting for admission")
            await expect(child, "Finished 20 runs")

            assert await end(child) == 0
