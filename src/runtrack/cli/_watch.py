"""``runtrack watch``: a live table of the active runs, redrawn until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runtrack._models import Run, utcnow
from runtrack._status import RunStatus
from runtrack.cli._app import EXIT_OK, run_async, state_of
from runtrack.cli._format import STATUS_STYLES, age, console, progress_cell, status_text
from runtrack.registry import RunRegistry

__all__ = ["render_watch", "watch_command"]

_ACTIVE = [RunStatus.RUNNING, RunStatus.QUEUED]


def render_watch(
    runs: list[Run], counts: dict[RunStatus, int], where: str, now: datetime | None = None
) -> Group:
    """The screen: counts by status, then one row per active run with its progress bar."""
    now = now or utcnow()
    header = Text.assemble(
        ("runtrack watch ", "bold"),
        (where, "dim"),
        "  ",
        *[
            part
            for status in RunStatus
            for part in ((f"{status.value} {counts.get(status, 0)}", STATUS_STYLES[status]), "  ")
        ],
    )
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    table.add_column("RUN", no_wrap=True)
    table.add_column("NAME", no_wrap=True, max_width=24)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("PROGRESS", no_wrap=True)
    table.add_column("", justify="right", no_wrap=True)
    table.add_column("AGE", justify="right", no_wrap=True)
    table.add_column("OWNER", no_wrap=True, max_width=24)
    table.add_column("MESSAGE", no_wrap=True, overflow="ellipsis", max_width=40)
    for run in runs:
        table.add_row(
            run.run_id[:8],
            run.name,
            status_text(run.status),
            progress_cell(run),
            "" if run.progress is None else f"{run.progress:.0%}",
            age(run.started_at or run.created_at, now),
            run.owner or "",
            run.progress_message or "",
        )
    footer = Text("" if runs else "no active runs", style="dim")
    return Group(header, Text(""), table, footer)


async def _snapshot(registry: RunRegistry, limit: int) -> tuple[list[Run], dict[RunStatus, int]]:
    runs = await registry.list_runs(status=_ACTIVE, limit=limit)
    runs.sort(key=lambda run: (run.status is not RunStatus.RUNNING, run.created_at))
    return runs, await registry.count_runs()


@click.command("watch")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between redraws.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Show at most this many active runs.",
)
@click.pass_context
def watch_command(ctx: click.Context, interval: float, limit: int) -> None:
    """Show the queued and running runs live, with progress bars and counts by status.

    Redraws every --interval seconds until Ctrl-C, which exits 0.
    """
    state = state_of(ctx)

    async def main() -> None:
        async with state.registry() as registry:
            runs, counts = await _snapshot(registry, limit)
            out = console()
            with Live(
                render_watch(runs, counts, state.where), console=out, auto_refresh=False
            ) as live:
                while True:
                    await asyncio.sleep(interval)
                    runs, counts = await _snapshot(registry, limit)
                    live.update(render_watch(runs, counts, state.where), refresh=True)

    with contextlib.suppress(KeyboardInterrupt):
        run_async(state, main)
    ctx.exit(EXIT_OK)
