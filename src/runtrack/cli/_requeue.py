"""``runtrack requeue``: run a finished durable run again."""

from __future__ import annotations

from datetime import timedelta

import click

from runtrack._models import Run
from runtrack._requeue import check_requeueable, requeue_run
from runtrack.cli._app import EXIT_FAILED, Fail, run_async, state_of
from runtrack.cli._durations import DURATION
from runtrack.cli._format import echo_json
from runtrack.cli._runs import find_run
from runtrack.registry.base import Notifying

__all__ = ["requeue_command"]


@click.command("requeue")
@click.argument("run_id")
@click.option(
    "--delay",
    type=DURATION,
    default=None,
    help="Start the new run no sooner than this (30s, 15m, 2h): recorded at once, with a "
    "not_before time that every replica respects.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the new run as JSON.")
@click.pass_context
def requeue_command(
    ctx: click.Context, run_id: str, delay: timedelta | None, as_json: bool
) -> None:
    """Queue a new run of a finished durable run's task, with the same arguments.

    Any manager that registered the task runs it (the new run's requeued_from names
    RUN_ID), with --delay no sooner than that; without it, idle managers are told at once
    where the registry pushes (PostgreSQL NOTIFY, Redis pub/sub). Exits 4 if there is no
    such run, 1 if it is not finished or not a run of a durable task.
    """
    state = state_of(ctx)

    async def main() -> Run:
        async with state.registry() as registry:
            run = await find_run(registry, run_id)
            try:
                check_requeueable(run)
            except ValueError as exc:
                raise Fail(str(exc), EXIT_FAILED) from exc
            # Announced as a manager's requeue is: an idle replica runs it at once.
            announce = registry.announce_new_work if isinstance(registry, Notifying) else None
            return await requeue_run(registry, run.run_id, delay, announce=announce)

    new = run_async(state, main)
    if as_json:
        echo_json(new.model_dump(mode="json"))
    else:
        click.echo(f"requeued {run_id} as {new.run_id}")
