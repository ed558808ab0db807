"""How ``runtrack demo`` shows its runs: a table redrawn in place, then a summary."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import Counter
from typing import Final, TextIO

from runtrack._manager import BackgroundTaskManager
from runtrack._models import Run
from runtrack._status import RunStatus
from runtrack.cli._demo_work import GROUP_LIMITS, MAX_CONCURRENCY
from runtrack.registry import RunRegistry

__all__ = ["PLAIN_EVERY", "Screen", "snapshot", "status_line", "summary", "watch"]

FRAMES_PER_SECOND: Final = 8
#: Seconds between status lines when stdout is not a terminal.
PLAIN_EVERY: Final = 1.0

COLORS = {
    RunStatus.QUEUED: "\x1b[2m",
    RunStatus.RUNNING: "\x1b[36m",
    RunStatus.COMPLETED: "\x1b[32m",
    RunStatus.FAILED: "\x1b[31m",
    RunStatus.CANCELLED: "\x1b[33m",
}
BOLD, RESET = "\x1b[1m", "\x1b[0m"


def detail(run: Run) -> str:
    """The last column: what the run is doing, returned, or died of."""
    if run.status is RunStatus.FAILED:
        kind, message = run.error_type or "error", run.error_message or ""
        return kind if message in ("", f"{kind}()") else f"{kind}: {message}"
    if run.status is RunStatus.COMPLETED:
        text = str(run.result) if run.result is not None else "done"
        return f"{text}  (attempt {run.attempt}/{run.max_attempts})" if run.attempt > 1 else text
    if run.status is RunStatus.CANCELLED:
        return "cancelled before it started" if run.started_at is None else "cancelled"
    if run.status is RunStatus.QUEUED and run.attempt > 1:
        return f"retry {run.attempt}/{run.max_attempts} after {run.error_type}"
    if run.status is RunStatus.QUEUED:
        return (
            f"waiting for admission (group {run.group})" if run.group else "waiting for admission"
        )
    return run.progress_message or ""


def bar(progress: float | None, width: int = 10) -> str:
    if progress is None:
        return " " * (width + 5)
    filled = round(progress * width)
    return "█" * filled + "·" * (width - filled) + f" {progress:>4.0%}"


Segment = tuple[str, str]  # (text, ANSI style or "")


def fit(segments: list[Segment], width: int, color: bool) -> str:
    """Join styled segments, cut to ``width`` visible characters so no line wraps."""
    out, left = [], width
    for text, style in segments:
        shown = text[: max(0, left)]
        left -= len(shown)
        out.append(f"{style}{shown}{RESET}" if color and style and shown else shown)
    return "".join(out)


def render(
    runs: list[Run], counts: dict[RunStatus, int], elapsed: float, color: bool, width: int
) -> list[str]:
    """The table as lines of at most ``width`` visible characters."""
    totals = "  ".join(f"{s.value} {counts.get(s, 0)}" for s in RunStatus)
    columns = (
        f"{'RUN':8}  {'NAME':15} {'GROUP':7} {'PRI':>3}  {'STATUS':9}  {'PROGRESS':15}  DETAIL"
    )
    rows: list[list[Segment]] = [
        [(f"runtrack demo  {elapsed:4.1f}s", BOLD), (f"   {totals}", "")],
        [(f"max_concurrency={MAX_CONCURRENCY}  group_limits={GROUP_LIMITS}", "")],
        [],
        [(columns, BOLD)],
    ]
    for run in runs:
        rows.append(
            [
                (
                    f"{run.run_id[:8]}  {run.name[:15]:15} {run.group or '':7} {run.priority:>3}  ",
                    "",
                ),
                (f"{run.status.value:9}", COLORS[run.status]),
                (f"  {bar(run.progress)}  {detail(run)}", ""),
            ]
        )
    return [fit(row, width, color) for row in rows]


class Screen:
    """Redraws a block of lines in place (ANSI) on a terminal; prints status lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty() and os.environ.get("TERM") != "dumb"
        self.color = self.live and "NO_COLOR" not in os.environ
        self.height = 0
        self.last_plain = -PLAIN_EVERY

    def width(self) -> int:
        return shutil.get_terminal_size((100, 40)).columns - 1

    def draw(self, runs: list[Run], counts: dict[RunStatus, int], elapsed: float) -> None:
        if not self.live:
            if elapsed - self.last_plain >= PLAIN_EVERY:
                self.last_plain = elapsed
                self.out.write(f"[{elapsed:4.1f}s] " + status_line(counts) + "\n")
                self.out.flush()
            return
        room = max(1, shutil.get_terminal_size((100, 40)).lines - 7)
        shown = runs if len(runs) <= room else runs[: room - 1]
        lines = render(shown, counts, elapsed, self.color, self.width())
        if len(shown) < len(runs):
            lines.append(f"... and {len(runs) - len(shown)} more runs")
        up = f"\x1b[{self.height}F" if self.height else ""
        self.out.write(up + "\x1b[J" + "\n".join(lines) + "\n")
        self.out.flush()
        self.height = len(lines)

    def __enter__(self) -> Screen:
        if self.live:
            self.out.write("\x1b[?25l")  # hide the cursor while redrawing
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live:
            self.out.write("\x1b[?25h")
            self.out.flush()


def status_line(counts: dict[RunStatus, int]) -> str:
    return " ".join(f"{s.value}={counts.get(s, 0)}" for s in RunStatus)


async def snapshot(registry: RunRegistry) -> tuple[list[Run], dict[RunStatus, int]]:
    """Everything shown is read back from the registry, as a dashboard in another process would."""
    runs = await registry.list_runs(limit=100)
    runs.sort(key=lambda r: r.created_at)
    return runs, await registry.count_runs()


async def watch(registry: RunRegistry, screen: Screen, started: float) -> None:
    while True:
        runs, counts = await snapshot(registry)
        screen.draw(runs, counts, time.monotonic() - started)
        await asyncio.sleep(1 / FRAMES_PER_SECOND)


async def summary(
    manager: BackgroundTaskManager,
    runs: list[Run],
    counts: dict[RunStatus, int],
    events: Counter[str],
    logged: Counter[str],
    elapsed: float,
) -> list[str]:
    lines = [
        "",
        f"Finished {len(runs)} runs in {elapsed:.1f}s. From the registry (count_runs):",
        "  " + status_line(counts),
        "",
        "Runs that did not complete (list_runs(status=[FAILED, CANCELLED])):",
    ]
    for run in await manager.registry.list_runs(status=[RunStatus.FAILED, RunStatus.CANCELLED]):
        lines.append(f"  {run.run_id[:8]}  {run.name:15} {run.status.value:9}  {detail(run)}")
    retried = [r for r in runs if r.attempt > 1]
    for run in retried:
        lines.append(
            f"Retried: {run.name} {run.status.value} on attempt {run.attempt}/{run.max_attempts}"
        )
    lines += [
        "",
        "Per name (manager.stats().by_name):",
        f"  {'NAME':16} {'RUNS':>4} {'OK':>3} {'FAILED':>6} {'CANCELLED':>9} "
        f"{'SUCCESS':>7} {'MEAN':>6} {'P95':>6}",
    ]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}s"

    for name, s in manager.stats().by_name.items():
        rate = "-" if s.success_rate is None else f"{s.success_rate:.0%}"
        lines.append(
            f"  {name:16} {s.finished:>4} {s.completed:>3} {s.failed:>6} {s.cancelled:>9} "
            f"{rate:>7} {seconds(s.mean_duration):>6} {seconds(s.p95_duration):>6}"
        )
    lines += [
        "",
        "Listener saw " + ", ".join(f"{n} {k}" for k, n in sorted(events.items())),
        "structlog events at WARNING and above: "
        + (", ".join(f"{k} x{n}" for k, n in sorted(logged.items())) or "none"),
    ]
    return lines
