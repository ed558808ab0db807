"""How runs look on a terminal: tables, details, ages and progress bars (rich)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Final

import click
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runtrack._models import Run, utcnow
from runtrack._status import RunStatus

__all__ = [
    "STATUS_STYLES",
    "age",
    "console",
    "detail",
    "echo_json",
    "progress_cell",
    "run_details",
    "runs_table",
    "seconds",
    "status_text",
]

#: The colour of each status, everywhere the CLI shows one.
STATUS_STYLES: Final = {
    RunStatus.QUEUED: "dim",
    RunStatus.RUNNING: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "yellow",
}


def console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); plain text when it is not a terminal."""
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def echo_json(value: Any) -> None:
    """Write ``value`` as indented JSON on stdout (the documented ``--json`` shapes)."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def seconds(delta: timedelta | float | None) -> str:
    """A short human duration: ``850ms``, ``12.3s``, ``4m05s``, ``2h10m``, ``3d04h``."""
    if delta is None:
        return "-"
    total = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    if total < 1:
        return f"{total * 1000:.0f}ms"
    if total < 60:
        return f"{total:.1f}s"
    minutes, secs = divmod(int(total), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def age(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``when`` was, e.g. ``12.3s``; ``-`` for None."""
    if when is None:
        return "-"
    return seconds(max(timedelta(0), (now or utcnow()) - when))


def status_text(status: RunStatus) -> Text:
    """The status's value in its colour."""
    return Text(status.value, style=STATUS_STYLES[status])


def progress_cell(run: Run, width: int = 20) -> ProgressBar | Text:
    """A progress bar and percentage for a run that reports progress, else an empty cell."""
    if run.progress is None:
        return Text("")
    return ProgressBar(total=1.0, completed=run.progress, width=width)


def detail(run: Run) -> str:
    """What a run is doing, returned, or died of, in one line."""
    if run.status is RunStatus.FAILED:
        kind, message = run.error_type or "error", run.error_message or ""
        return kind if message in ("", f"{kind}()") else f"{kind}: {message}"
    if run.status is RunStatus.COMPLETED:
        return "done" if run.result is None else json.dumps(run.result, ensure_ascii=False)
    if run.status is RunStatus.CANCELLED:
        return "cancelled before it started" if run.started_at is None else "cancelled"
    if run.status is RunStatus.QUEUED:
        return f"waiting (group {run.group})" if run.group else "waiting"
    return run.progress_message or ""


def _duration(run: Run, now: datetime) -> str:
    if run.started_at is None:
        return "-"
    return seconds((run.finished_at or now) - run.started_at)


def runs_table(runs: list[Run], *, title: str | None = None) -> Table:
    """The runs as a table: id, name, status, progress, age, duration and detail."""
    now = utcnow()
    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    # The id and the status are never cut (an id is what `show` and `cancel` take); the
    # name and the detail give way on a narrow terminal.
    table.add_column("RUN", no_wrap=True, min_width=36)
    table.add_column("NAME", no_wrap=True, max_width=28, overflow="ellipsis")
    table.add_column("STATUS", no_wrap=True, min_width=9)
    table.add_column("PROG", justify="right", no_wrap=True, min_width=4)
    table.add_column("AGE", justify="right", no_wrap=True, min_width=6)
    table.add_column("TOOK", justify="right", no_wrap=True, min_width=6)
    table.add_column("DETAIL", overflow="ellipsis", no_wrap=True, max_width=60)
    for run in runs:
        progress: Any = Text("")
        if run.progress is not None:
            progress = Text(f"{run.progress:.0%}")
        table.add_row(
            run.run_id,
            run.name,
            status_text(run.status),
            progress,
            age(run.created_at, now),
            _duration(run, now),
            detail(run),
        )
    return table


def run_details(run: Run) -> Table:
    """Every field of one run, one per line."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    now = utcnow()
    values = run.model_dump(mode="json")
    for field, value in values.items():
        shown: Any
        if field == "status":
            shown = status_text(run.status)
        elif value is None or value in ({}, ""):
            continue
        elif isinstance(value, dict | list):
            shown = json.dumps(value, ensure_ascii=False)
        else:
            shown = str(value)
        table.add_row(field, shown)
    if run.started_at is not None:
        table.add_row("duration", _duration(run, now))
    return table
