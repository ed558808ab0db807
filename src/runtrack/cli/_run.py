"""``runtrack run -- CMD ARGS...``: run a command as a tracked run, here, and show it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Final

import click
from rich.live import Live
from rich.spinner import Spinner

from runtrack._manager import BackgroundTaskManager
from runtrack._models import Run
from runtrack._status import RunStatus
from runtrack.cli._app import EXIT_FAILED, EXIT_INTERRUPTED, run_async, state_of
from runtrack.cli._durations import DURATION
from runtrack.cli._follow import follow_output, write_chunk
from runtrack.cli._format import console, seconds

__all__ = ["exit_code_of", "run_command"]

#: Exit codes for failures that have no exit code of their own, as shells give them.
_ERROR_EXIT: Final = {"CommandNotFound": 127, "CommandNotExecutable": 126, "TimeoutError": 124}
#: Where a CommandFailed message says the exit code (``-N``: killed by signal N).
_EXIT_IN_MESSAGE: Final = re.compile(r"exited with code (-?\d+)|\(exit code (-?\d+)\)")
#: What a signal that stops `runtrack run` makes it exit with (128 + the signal).
_SIGNAL_EXIT: Final = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: 128 + signal.SIGTERM}


def exit_code_of(run: Run) -> int:
    """What ``runtrack run`` exits with for a finished command run.

    The command's own exit code (128 + N when signal N killed it), 127
    when it was not found, 126 when it could not be executed, 124 when it timed out, and
    1 for any other failure or a cancel.
    """
    result = run.result
    code = result.get("exit_code") if isinstance(result, dict) else None
    if code is None and run.error_type == "CommandFailed" and run.error_message:
        # A record without a result (written before failed command runs kept theirs):
        # the exit code is in the message.
        found = _EXIT_IN_MESSAGE.search(run.error_message)
        if found:
            code = int(found.group(1) or found.group(2))
    if isinstance(code, int) and not isinstance(code, bool):
        return 128 - code if code < 0 else code
    if run.status is RunStatus.COMPLETED:
        return 0
    return _ERROR_EXIT.get(run.error_type or "", EXIT_FAILED)


class _StatusLine:
    """A spinner line on stderr under the command's output: name, run id, time, progress."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.started = time.monotonic()
        self.spinner = Spinner("dots", self.text())

    def text(self) -> str:
        run = self.run
        doing = run.progress_message or run.status.value
        progress = f" {run.progress:.0%}" if run.progress is not None else ""
        took = seconds(time.monotonic() - self.started)
        return f"{run.name} · run {run.run_id} · {took} · {doing}{progress}"

    def update(self, run: Run) -> None:
        self.run = run
        self.spinner.update(text=self.text())


@contextlib.contextmanager
def _live_status(run: Run) -> Iterator[_StatusLine | None]:
    """Show a status line on stderr when stderr is a terminal; the output goes above it."""
    err = console(stderr=True)
    if not err.is_terminal:
        yield None
        return
    line = _StatusLine(run)
    # stdout goes through the live display only when it is the terminal too: a piped
    # stdout must receive the command's output untouched.
    with Live(
        line.spinner,
        console=err,
        transient=True,
        refresh_per_second=8,
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=True,
    ):
        yield line


async def _run(
    manager: BackgroundTaskManager, argv: list[str], name: str | None, timeout: float | None
) -> tuple[Run, int | None]:
    """Run the command, stream its output, and cancel it on SIGINT or SIGTERM.

    Returns:
        The finished run, and the signal that stopped it (None if none did).
    """
    loop = asyncio.get_running_loop()
    stopped: list[int] = []
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        stopped.append(signum)
        stop.set()

    for sig in _SIGNAL_EXIT:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        run = await manager.run_command(argv, name=name, timeout=timeout)
        with _live_status(run) as line:
            finished = asyncio.Event()
            waiter = asyncio.create_task(manager.wait(run.run_id))
            waiter.add_done_callback(lambda _: finished.set())
            follower = asyncio.create_task(
                follow_output(manager.registry, run.run_id, finished=finished, write=write_chunk)
            )
            stopper = asyncio.create_task(stop.wait())
            while not waiter.done():
                await asyncio.wait(
                    [waiter, stopper, follower], timeout=0.25, return_when="FIRST_COMPLETED"
                )
                # A signal, or output that cannot be written (`runtrack run -- yes | head`:
                # the follower ends early only by failing) stops the command.
                if (stop.is_set() or follower.done()) and not waiter.done():
                    await manager.cancel_task(run.run_id)
                    break
                if line is not None:
                    latest = await manager.registry.get_run(run.run_id)
                    if latest is not None:
                        line.update(latest)
            final = await waiter
            stopper.cancel()
            await follower
    finally:
        for sig in _SIGNAL_EXIT:
            loop.remove_signal_handler(sig)
    return final, (stopped[0] if stopped else None)


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--name", help="The run's name; default the command's name.")
@click.option("--timeout", type=DURATION, help="Kill the command after this long (30s, 15m, 2h).")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS]...")
@click.pass_context
def run_command(
    ctx: click.Context, name: str | None, timeout: timedelta | None, argv: tuple[str, ...]
) -> None:
    """Run a command as a tracked run here, streaming its output, and exit with its code.

    The command runs without a shell (use `sh -c '...'` for one), with its stdin
    closed. Its output is recorded
    in the registry as it arrives and printed here (stdout to stdout, stderr to stderr);
    when stderr is a terminal a status line shows the run's id, time and progress.
    Ctrl-C cancels the run (recorded CANCELLED, the command's process group killed) and
    exits 130. Exit codes: the command's own; 127 not found, 126 not executable, 124
    timed out, 1 any other failure.
    """
    state = state_of(ctx)
    seconds_limit = None if timeout is None else timeout.total_seconds()

    async def main() -> tuple[Run, int | None]:
        async with (
            state.registry() as registry,
            BackgroundTaskManager(registry) as manager,
        ):
            return await _run(manager, list(argv), name, seconds_limit)

    final, signum = run_async(state, main)
    err = console(stderr=True)
    if signum is not None:
        click.echo(f"cancelled run {final.run_id} ({final.status.value})", err=True)
        ctx.exit(_SIGNAL_EXIT[signal.Signals(signum)])
    code = exit_code_of(final)
    if final.status is RunStatus.FAILED and final.error_type != "CommandFailed":
        click.echo(f"error: {final.error_type}: {final.error_message}", err=True)
    elif final.status is RunStatus.CANCELLED:
        click.echo(f"error: run {final.run_id} was cancelled", err=True)
    if err.is_terminal:
        took = "-"
        if final.started_at and final.finished_at:
            took = seconds(final.finished_at - final.started_at)
        err.print(
            f"[dim]run {final.run_id} {final.status.value} in {took} (exit {code})[/dim]",
            highlight=False,
        )
    ctx.exit(code)
