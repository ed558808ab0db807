"""``runtrack list``, ``show``, ``cancel`` and ``prune``: read and tidy the runs."""

from __future__ import annotations

from datetime import timedelta

import click

from runtrack._manager import BackgroundTaskManager
from runtrack._models import Run
from runtrack._status import RunStatus
from runtrack.cli._app import EXIT_FAILED, EXIT_NOT_FOUND, Fail, run_async, state_of
from runtrack.cli._durations import DURATION
from runtrack.cli._format import console, echo_json, run_details, runs_table
from runtrack.registry import RunRegistry

__all__ = ["cancel_command", "find_run", "list_command", "prune_command", "show_command"]

_STATUSES = click.Choice([status.value for status in RunStatus], case_sensitive=False)


async def find_run(registry: RunRegistry, run_id: str) -> Run:
    """The run with this id.

    Raises:
        Fail: no such run (exit 4).
    """
    run = await registry.get_run(run_id)
    if run is not None:
        return run
    raise Fail(
        f"no run {run_id!r} in the registry: check the id (runtrack list shows them)",
        EXIT_NOT_FOUND,
    )


def _parse_tags(values: tuple[str, ...]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        key, sep, tag = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not key=value", param_hint="--tag")
        tags[key] = tag
    return tags


@click.command("list")
@click.option(
    "--status",
    "statuses",
    type=_STATUSES,
    multiple=True,
    help="Only runs in this status (repeatable).",
)
@click.option("--name", help="Only runs of this name.")
@click.option("--group", help="Only runs of this concurrency group.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only runs with this tag (repeatable).",
)
@click.option("--dead", is_flag=True, help="Only dead letters: durable runs that failed for good.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help='Print {"runs": [...], "count": N}.')
@click.pass_context
def list_command(
    ctx: click.Context,
    statuses: tuple[str, ...],
    name: str | None,
    group: str | None,
    tags: tuple[str, ...],
    dead: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    state = state_of(ctx)
    wanted = _parse_tags(tags)

    async def main() -> list[Run]:
        async with state.registry() as registry:
            return await registry.list_runs(
                status=[RunStatus(s.lower()) for s in statuses] or None,
                name=name,
                group=group,
                tags=wanted or None,
                limit=limit,
                dead=True if dead else None,
            )

    runs = run_async(state, main)
    if as_json:
        echo_json({"runs": [run.model_dump(mode="json") for run in runs], "count": len(runs)})
    elif not runs:
        click.echo("no runs", err=True)
    else:
        console().print(runs_table(runs))


@click.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.pass_context
def show_command(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show every field of one run."""
    state = state_of(ctx)

    async def main() -> Run:
        async with state.registry() as registry:
            return await find_run(registry, run_id)

    run = run_async(state, main)
    if as_json:
        echo_json(run.model_dump(mode="json"))
    else:
        console().print(run_details(run))


@click.command("cancel")
@click.argument("run_id")
@click.pass_context
def cancel_command(ctx: click.Context, run_id: str) -> None:
    """Cancel a queued or running run, whichever process runs it.

    The run is recorded CANCELLED at once. Exits 1 if it had already finished.
    """
    state = state_of(ctx)

    async def main() -> Run | None:
        async with (
            state.registry() as registry,
            BackgroundTaskManager(registry, shutdown_grace=0) as manager,
        ):
            run = await find_run(registry, run_id)
            if await manager.cancel_task(run.run_id):
                return None
            return await registry.get_run(run.run_id)

    finished = run_async(state, main)
    if finished is None:
        click.echo(f"cancelled {run_id}")
    else:
        raise Fail(f"run {run_id} already {finished.status.value}: nothing to cancel", EXIT_FAILED)


@click.command("prune")
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    help="Delete finished runs that finished longer ago than this (30s, 15m, 2h, 7d).",
)
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Keep the newest N finished runs whatever their age.",
)
@click.pass_context
def prune_command(ctx: click.Context, older_than: timedelta, keep: int) -> None:
    """Delete old finished runs and their output (queued and running runs stay)."""
    state = state_of(ctx)

    async def main() -> int:
        async with state.registry() as registry:
            return await registry.cleanup_old_runs(older_than=older_than, keep=keep)

    deleted = run_async(state, main)
    click.echo(f"deleted {deleted} run{'s' if deleted != 1 else ''}")
