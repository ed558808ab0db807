"""A live tour of runtrack: twenty background runs with every outcome, shown as they happen.

Run it with ``make demo`` (or ``python examples/demo.py``). It starts runs that complete,
fail, time out, get cancelled, report progress, retry, wait for a concurrency group and jump
the queue by priority; redraws their statuses while they run; and ends with a summary read
back from the registry and from ``manager.stats()``.

Runs are recorded in a fresh SQLite file, ``runtrack-demo.db`` in the current directory
(the embedded default: WAL mode, every status change persisted), unless
``RUNTRACK_DEMO_URL`` names another registry, e.g. ``RUNTRACK_DEMO_URL=memory://`` or
``RUNTRACK_DEMO_URL=redis://127.0.0.1:6379/0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from runtrack import (
    BackgroundTaskManager,
    Retry,
    Run,
    RunEvent,
    RunRegistry,
    RunStatus,
    current_run,
    registry_from_url,
    report_progress,
)

MAX_CONCURRENCY = 5
GROUP_LIMITS = {"exports": 2}
FRAMES_PER_SECOND = 8
PLAIN_EVERY = 1.0  # seconds between status lines when stdout is not a terminal

# -- the work ---------------------------------------------------------------------------------


async def fetch_prices(symbol: str, seconds: float) -> dict[str, Any]:
    """Completes with a JSON result, reporting progress on the way."""
    for step in range(1, 5):
        await asyncio.sleep(seconds / 4)
        await report_progress(step / 4, f"{symbol}: batch {step}/4")
    return {"symbol": symbol, "price": round(100 + 7.3 * len(symbol), 2)}


async def export_report(customer: str, pages: int) -> str:
    """Runs in the ``exports`` group, of which at most two run at once."""
    for page in range(1, pages + 1):
        await asyncio.sleep(0.3)
        await report_progress(page / pages, f"page {page}/{pages}")
    return f"{customer}.pdf ({pages} pages)"


async def charge_card(order: int, amount: float) -> str:
    """Fails with a ValueError when the amount is over the limit."""
    await asyncio.sleep(0.6)
    if amount > 500:
        raise ValueError(f"card declined for order {order}: {amount:.2f} is over the limit")
    return f"charged {amount:.2f}"


async def rebuild_index() -> None:
    """Takes far longer than its timeout, so it is recorded FAILED with TimeoutError."""
    for step in range(1, 101):
        await asyncio.sleep(0.1)
        await report_progress(step / 100, "rebuilding")


async def train_model(epochs: int) -> float:
    """Long enough that the demo cancels it while it runs."""
    for epoch in range(1, epochs + 1):
        await asyncio.sleep(0.25)
        await report_progress(epoch / epochs, f"epoch {epoch}/{epochs}")
    return 0.97


async def sync_inventory(warehouse: str) -> str:
    """Fails twice with ConnectionError, then succeeds on the third attempt."""
    attempt = current_run().attempt
    await asyncio.sleep(0.5)
    if attempt < 3:
        raise ConnectionError(f"{warehouse} API unavailable (attempt {attempt})")
    return f"{warehouse} in sync after {attempt} attempts"


async def send_email(to: str) -> str:
    """A quick run; the demo gives these different priorities."""
    await asyncio.sleep(0.4)
    return f"sent to {to}"


async def start_runs(manager: BackgroundTaskManager) -> dict[str, str]:
    """Start every run of the demo; returns the ids the demo will cancel."""
    # start_task: synchronous, returns the id at once (the run is recorded QUEUED).
    for symbol, seconds in [("ACME", 1.6), ("GLOBEX", 1.0), ("INITECH", 2.4), ("UMBRELLA", 1.2)]:
        manager.start_task(
            Run(parameters={"symbol": symbol}, tags={"team": "markets"}),
            fetch_prices(symbol, seconds),
        )
    # submit: the QUEUED record is written before it returns; fn and arguments are separate.
    training = await manager.submit(train_model, 40, tags={"team": "ml"})
    for customer, pages in [("acme", 5), ("globex", 4), ("initech", 6), ("hooli", 3)]:
        await manager.submit(
            export_report, customer, pages, group="exports", parameters={"customer": customer}
        )
    for order, amount in [(1001, 20.0), (1002, 740.0), (1003, 99.9)]:
        await manager.submit(charge_card, order, amount, parameters={"order": order})
    await manager.submit(rebuild_index, timeout=1.5)
    await manager.submit(sync_inventory, "berlin", retry=Retry(attempts=3, backoff=0.2))
    for to in ["newsletter-a@example.com", "newsletter-b@example.com"]:
        await manager.submit(send_email, to, name="send_newsletter", priority=-5)
    reminder = await manager.submit(send_email, "team@example.com", name="reminder", delay=60)
    for to in ["ceo@example.com", "ops@example.com"]:
        await manager.submit(send_email, to, name="password_reset", priority=10)
    await manager.submit(fetch_prices, "HOOLI", 0.6, priority=1)
    return {"running": training.run_id, "queued": reminder.run_id}


async def cancel_later(manager: BackgroundTaskManager, to_cancel: dict[str, str]) -> None:
    """Cancel a run mid-way and a scheduled one before it is due."""
    await asyncio.sleep(3.0)
    for run_id in to_cancel.values():
        await manager.cancel_task(run_id)


# -- showing it --------------------------------------------------------------------------------

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


# -- main -------------------------------------------------------------------------------------


def configure_logging(logged: Counter[str]) -> None:
    """Keep log lines out of the live table: count WARNING+ events and drop them."""

    def count(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
        logged[str(event_dict.get("event"))] += 1
        raise structlog.DropEvent

    structlog.configure(
        processors=[count],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


DEMO_DB = Path("runtrack-demo.db")


def _fresh_sqlite_url() -> str:
    """A SQLite registry in ./runtrack-demo.db, emptied first so the demo shows only its runs."""
    for leftover in (DEMO_DB, Path(f"{DEMO_DB}-wal"), Path(f"{DEMO_DB}-shm")):
        leftover.unlink(missing_ok=True)
    return f"sqlite+aiosqlite:///{DEMO_DB.resolve()}"


async def main() -> int:
    logged: Counter[str] = Counter()
    configure_logging(logged)
    events: Counter[str] = Counter()

    def on_event(event: RunEvent) -> None:
        retry = event.status is RunStatus.QUEUED and event.previous is RunStatus.RUNNING
        events["retries" if retry else event.status.value] += 1

    url = os.environ.get("RUNTRACK_DEMO_URL") or _fresh_sqlite_url()
    started = time.monotonic()
    async with (
        registry_from_url(url) as registry,
        BackgroundTaskManager(
            registry, max_concurrency=MAX_CONCURRENCY, group_limits=GROUP_LIMITS, shutdown_grace=5
        ) as manager,
    ):
        manager.add_listener(on_event)
        with Screen(sys.stdout) as screen:
            if not screen.live:
                print(f"runtrack demo: {url}, max_concurrency={MAX_CONCURRENCY}, {GROUP_LIMITS}")
            watcher = asyncio.create_task(watch(registry, screen, started))
            to_cancel = await start_runs(manager)
            canceller = asyncio.create_task(cancel_later(manager, to_cancel))
            await manager.wait_all(timeout=30)
            await canceller
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            runs, counts = await snapshot(registry)
            screen.last_plain = -PLAIN_EVERY  # always show the final state
            screen.draw(runs, counts, time.monotonic() - started)
        elapsed = time.monotonic() - started
        print("\n".join(await summary(manager, runs, counts, events, logged, elapsed)))
    if url.startswith("sqlite"):
        where = url.split(":///", 1)[1]
        print(f"\nEvery run above is recorded in {where}: read it again with")
        print(f'  sqlite3 {where} "select name, status, error_type from runtrack_runs"')
    unfinished = [r for r in runs if not r.is_finished]
    if unfinished:
        print(f"error: {len(unfinished)} runs did not finish", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
