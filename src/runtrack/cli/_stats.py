"""``runtrack stats`` and ``runtrack managers``: counts, the machine, who runs what."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import click
from rich.table import Table

from runtrack._models import Run
from runtrack._status import RunStatus
from runtrack._system import system_stats
from runtrack.cli._app import run_async, state_of
from runtrack.cli._format import age, console, echo_json, status_text
from runtrack.registry import RunRegistry

__all__ = ["active_owners", "managers_command", "stats_command"]

#: Per-name counts cover the names among this many newest runs.
NAMES_FROM: Final = 1000
#: At most this many names get counts of their own.
MAX_NAMES: Final = 50
#: RUNNING runs read to find the managers.
ACTIVE_LIMIT: Final = 10_000


def _counts(counts: dict[RunStatus, int]) -> dict[str, int]:
    return {status.value: counts.get(status, 0) for status in RunStatus}


async def _stats(registry: RunRegistry) -> dict[str, Any]:
    counts = await registry.count_runs()
    names: list[str] = []
    for run in await registry.list_runs(limit=NAMES_FROM):
        if run.name not in names:
            names.append(run.name)
    by_name = {name: _counts(await registry.count_runs(name=name)) for name in names[:MAX_NAMES]}
    return {
        "counts": _counts(counts),
        "total": sum(counts.values()),
        "by_name": dict(sorted(by_name.items())),
        "system": system_stats().model_dump(mode="json"),
    }


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def stats_command(ctx: click.Context, as_json: bool) -> None:
    """Runs by status (in all and per name), and the load and memory of this machine.

    Per-name counts cover the names among the newest 1000 runs (at most 50 names).
    """
    state = state_of(ctx)

    async def main() -> dict[str, Any]:
        async with state.registry() as registry:
            return await _stats(registry)

    stats = run_async(state, main)
    if as_json:
        echo_json(stats)
        return
    out = console()
    out.print(
        "  ".join(f"{status} {count}" for status, count in stats["counts"].items())
        + f"  total {stats['total']}",
        markup=False,
    )
    if stats["by_name"]:
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("NAME", no_wrap=True)
        for status in RunStatus:
            table.add_column(status.value.upper(), justify="right")
        for name, counts in stats["by_name"].items():
            table.add_row(name, *(str(counts[s.value]) for s in RunStatus))
        out.print()
        out.print(table)
    system = stats["system"]
    out.print()
    out.print(
        f"load {system['load_1m']:.2f} {system['load_5m']:.2f} {system['load_15m']:.2f} "
        f"on {system['cpu_count']} CPUs; memory {system['memory_percent']:.0f}% used, "
        f"{_gib(system['memory_available_bytes'])} of {_gib(system['memory_total_bytes'])} "
        "available",
        markup=False,
    )


def _json_time(value: object) -> str | None:
    """A time as the runs' JSON writes it: ISO 8601 in UTC, ending in ``Z``."""
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def active_owners(runs: list[Run]) -> list[dict[str, Any]]:
    """Per owner of ``runs``: how many of them it runs and its latest heartbeat.

    Returns:
        ``{"owner", "running", "heartbeat_at"}`` dicts, busiest first.
    """
    seen: dict[str, tuple[int, datetime | None]] = {}
    for run in runs:
        owner = run.owner or "(unknown)"
        count, beat = seen.get(owner, (0, None))
        latest = run.heartbeat_at or run.started_at
        if beat is None or (latest is not None and latest > beat):
            beat = latest
        seen[owner] = (count + 1, beat)
    rows = [
        {"owner": owner, "running": count, "heartbeat_at": beat}
        for owner, (count, beat) in seen.items()
    ]
    rows.sort(key=lambda row: (-int(str(row["running"])), str(row["owner"])))
    return rows


@click.command("managers")
@click.option("--json", "as_json", is_flag=True, help="Print the managers as JSON.")
@click.pass_context
def managers_command(ctx: click.Context, as_json: bool) -> None:
    """The managers sharing the registry, as seen from their running runs.

    Until managers record their presence in the registry, a manager is known by the
    ``owner`` of the runs it is running: one running nothing is not listed. Shows how
    many runs each runs and when it last wrote a heartbeat.
    """
    state = state_of(ctx)

    async def main() -> list[Run]:
        async with state.registry() as registry:
            return await registry.list_runs(status=RunStatus.RUNNING, limit=ACTIVE_LIMIT)

    owners = active_owners(run_async(state, main))
    if as_json:
        echo_json(
            {
                "managers": [
                    {**row, "heartbeat_at": _json_time(row["heartbeat_at"])} for row in owners
                ]
            }
        )
        return
    if not owners:
        click.echo("no manager is running a run", err=True)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("OWNER", no_wrap=True)
    table.add_column(status_text(RunStatus.RUNNING).plain.upper(), justify="right")
    table.add_column("LAST HEARTBEAT", justify="right")
    for row in owners:
        table.add_row(row["owner"], str(row["running"]), f"{age(row['heartbeat_at'])} ago")
    console().print(table)
