"""``runtrack demo`` (what ``make demo`` runs): twenty runs with every outcome, live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import Counter
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Final

import click
import structlog

from runtrack._manager import BackgroundTaskManager
from runtrack._models import RunEvent
from runtrack._status import RunStatus
from runtrack.cli._app import EXIT_FAILED, CliState, run_async, state_of
from runtrack.cli._demo_screen import PLAIN_EVERY, Screen, snapshot, summary, watch
from runtrack.cli._demo_work import GROUP_LIMITS, MAX_CONCURRENCY, cancel_later, start_runs

__all__ = ["demo_command"]

#: Where the demo records its runs unless ``--registry`` names another registry.
DEMO_DB: Final = Path("runtrack-demo.db")


def _count_logs(logged: Counter[str]) -> None:
    """Keep log lines out of the live table: count WARNING+ events and drop them."""

    def count(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
        logged[str(event_dict.get("event"))] += 1
        raise structlog.DropEvent

    structlog.configure(
        processors=[count],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


def _fresh_sqlite_url() -> str:
    """A SQLite registry in ./runtrack-demo.db, emptied first so the demo shows only its runs."""
    for leftover in (DEMO_DB, Path(f"{DEMO_DB}-wal"), Path(f"{DEMO_DB}-shm")):
        leftover.unlink(missing_ok=True)
    return f"sqlite+aiosqlite:///{DEMO_DB.resolve()}"


async def _demo(state: CliState) -> int:
    logged: Counter[str] = Counter()
    _count_logs(logged)
    events: Counter[str] = Counter()

    def on_event(event: RunEvent) -> None:
        retry = event.status is RunStatus.QUEUED and event.previous is RunStatus.RUNNING
        events["retries" if retry else event.status.value] += 1

    started = time.monotonic()
    out = sys.stdout
    async with (
        state.registry() as registry,
        BackgroundTaskManager(
            registry, max_concurrency=MAX_CONCURRENCY, group_limits=GROUP_LIMITS, shutdown_grace=5
        ) as manager,
    ):
        manager.add_listener(on_event)
        with Screen(out) as screen:
            if not screen.live:
                click.echo(
                    f"runtrack demo: {state.where}, "
                    f"max_concurrency={MAX_CONCURRENCY}, {GROUP_LIMITS}"
                )
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
        click.echo("\n".join(await summary(manager, runs, counts, events, logged, elapsed)))
    if state.url.startswith("sqlite"):
        where = state.url.split(":///", 1)[1]
        click.echo(f"\nEvery run above is recorded in {where}: read it again with")
        click.echo(f"  runtrack --registry {state.url} list")
    unfinished = [r for r in runs if not r.is_finished]
    if unfinished:
        click.echo(f"error: {len(unfinished)} runs did not finish", err=True)
        return EXIT_FAILED
    return 0


@click.command("demo")
@click.pass_context
def demo_command(ctx: click.Context) -> None:
    """Start twenty runs with every outcome and show them live, then a summary.

    Runs complete, fail, time out, retry, get cancelled, report progress, wait for a
    concurrency group and jump the queue by priority. They are recorded in a fresh
    ./runtrack-demo.db (SQLite) unless --registry names another registry on the command
    line (RUNTRACK_REGISTRY_URL is ignored here, so the demo never writes into the
    registry your services use by accident).
    """
    state = state_of(ctx)
    url = state.url if state.url_from_command_line else _fresh_sqlite_url()
    demo_state = CliState(url=url, prefix=state.prefix, debug=state.debug)
    ctx.exit(run_async(demo_state, lambda: _demo(demo_state)))
