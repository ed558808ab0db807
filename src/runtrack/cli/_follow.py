"""``runtrack output``: print a run's output, and follow it until the run ends."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Final

import click

from runtrack._models import OutputChunk, Run
from runtrack._status import TERMINAL, RunStatus
from runtrack.cli._app import EXIT_FAILED, run_async, state_of
from runtrack.cli._runs import find_run
from runtrack.registry import RunRegistry

__all__ = ["POLL_INTERVAL", "follow_output", "output_command", "write_chunk"]

#: Seconds between two reads of new output while following.
POLL_INTERVAL: Final = 0.2
#: Chunks read per request.
_PAGE: Final = 1000


def write_chunk(chunk: OutputChunk) -> None:
    """Write a chunk's text to stderr if it came from stderr, else to stdout."""
    stream = sys.stderr if chunk.stream == "stderr" else sys.stdout
    stream.write(chunk.text)
    stream.flush()


async def follow_output(
    registry: RunRegistry,
    run_id: str,
    *,
    since: int = 0,
    follow: bool = True,
    write: Callable[[OutputChunk], None] = write_chunk,
    finished: asyncio.Event | None = None,
) -> tuple[int, Run | None]:
    """Write the output of a run from ``since`` on; with ``follow``, until the run ends.

    Args:
        registry: Where the run and its output are.
        run_id: The run.
        since: Write the chunks whose sequence number is above this.
        follow: Keep reading until the run is finished (and its last output written).
        write: Called with every chunk, oldest first.
        finished: When given, following stops once it is set and no output is left,
            instead of when the registry says the run has finished.

    Returns:
        The sequence number of the last chunk written, and the run's record as last read
        (None without ``follow``).
    """
    last = since
    while True:
        run = await registry.get_run(run_id) if follow and finished is None else None
        done = (
            finished.is_set() if finished is not None else (run is None or run.status in TERMINAL)
        )
        while True:
            chunks = await registry.get_output(run_id, since=last, limit=_PAGE)
            for chunk in chunks:
                write(chunk)
                last = chunk.seq
            if len(chunks) < _PAGE:
                break
        if not follow or done:
            return last, run
        if finished is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), POLL_INTERVAL)
        else:
            await asyncio.sleep(POLL_INTERVAL)


@click.command("output")
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the run ends.")
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Print only the chunks after this sequence number.",
)
@click.pass_context
def output_command(ctx: click.Context, run_id: str, follow: bool, since: int) -> None:
    """Print the output a run captured (stdout to stdout, stderr to stderr).

    With --follow, exit when the run ends: 0 if it completed, 1 otherwise.
    """
    state = state_of(ctx)

    async def main() -> Run | None:
        async with state.registry() as registry:
            await find_run(registry, run_id)
            _, run = await follow_output(registry, run_id, since=since, follow=follow)
            return run

    run = run_async(state, main)
    if run is not None and run.status is not RunStatus.COMPLETED:
        ctx.exit(EXIT_FAILED)
