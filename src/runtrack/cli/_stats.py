"""``runtrack stats`` and ``runtrack managers``: counts, the machine, the managers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import click
from rich.table import Table
from rich.text import Text

from runtrack._models import Run, utcnow
from runtrack._presence import ManagerInfo
from runtrack._status import RunStatus
from runtrack._system import system_stats
from runtrack.cli._app import run_async, state_of
from runtrack.cli._format import age, console, echo_json, seconds, status_text
from runtrack.registry import RunRegistry
from runtrack.registry.base import ManagerPresence

__all__ = ["active_owners", "find_managers", "manager_rows", "managers_command", "stats_command"]

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


def _limit(limit: int | None) -> str:
    return "∞" if limit is None else str(limit)


async def find_managers(registry: RunRegistry) -> tuple[list[ManagerInfo] | None, list[Run]]:
    """The registered managers, or (None and) the RUNNING runs without `ManagerPresence`."""
    if isinstance(registry, ManagerPresence):
        return await registry.list_managers(), []
    return None, await registry.list_runs(status=RunStatus.RUNNING, limit=ACTIVE_LIMIT)


def manager_rows(managers: list[ManagerInfo], now: datetime) -> list[dict[str, Any]]:
    """The ``--json`` entries of registered managers: their fields, and whether ``late``.

    A manager is late when its heartbeat is older than its own lease: the next lease check
    of any other manager declares it dead.
    """
    return [
        {**info.model_dump(mode="json"), "late": info.expired(now)}
        for info in sorted(managers, key=lambda info: info.owner)
    ]


def _print_registered(managers: list[ManagerInfo], now: datetime) -> None:
    if not managers:
        click.echo("no manager is registered", err=True)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("OWNER", no_wrap=True)
    table.add_column("HOST", no_wrap=True)
    table.add_column("PID", justify="right")
    table.add_column("STARTED", justify="right")
    table.add_column("LAST HEARTBEAT", justify="right")
    table.add_column("RUNNING / LIMIT", justify="right")
    table.add_column("LEASE", justify="right")
    for info in sorted(managers, key=lambda info: info.owner):
        beat = Text(f"{age(info.heartbeat_at, now)} ago")
        if info.expired(now):
            beat.append(" late", style="red")
        table.add_row(
            Text(info.owner),
            Text(info.host or "-"),
            str(info.pid or "-"),
            f"{age(info.started_at, now)} ago",
            beat,
            f"{info.running} / {_limit(info.max_concurrency)}",
            seconds(info.lease_seconds),
        )
    console().print(table)


def _print_derived(runs: list[Run]) -> None:
    owners = active_owners(runs)
    if not owners:
        click.echo("no manager is running a run", err=True)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("OWNER", no_wrap=True)
    table.add_column(status_text(RunStatus.RUNNING).plain.upper(), justify="right")
    table.add_column("LAST HEARTBEAT", justify="right")
    for row in owners:
        table.add_row(Text(row["owner"]), str(row["running"]), f"{age(row['heartbeat_at'])} ago")
    console().print(table)


@click.command("managers")
@click.option("--json", "as_json", is_flag=True, help="Print the managers as JSON.")
@click.pass_context
def managers_command(ctx: click.Context, as_json: bool) -> None:
    """The managers sharing the registry: where they run, their heartbeat and load.

    Every manager registers itself in the registry and refreshes its heartbeat once per
    ``heartbeat_interval``. Shows each one's owner, host, pid, when it started, its last
    heartbeat, how many runs it runs out of its limit (∞: unbounded) and its lease. A
    manager whose heartbeat is older than its lease is shown ``late``: the next lease check
    of another manager declares it dead and records its runs interrupted.

    With a registry that does not keep managers, they are known only by the ``owner`` of
    their RUNNING runs (one running nothing is not listed).
    """
    state = state_of(ctx)

    async def main() -> tuple[list[ManagerInfo] | None, list[Run]]:
        async with state.registry() as registry:
            return await find_managers(registry)

    registered, runs = run_async(state, main)
    now = utcnow()
    if as_json:
        if registered is None:
            managers = [
                {**row, "heartbeat_at": _json_time(row["heartbeat_at"])}
                for row in active_owners(runs)
            ]
        else:
            managers = manager_rows(registered, now)
        echo_json({"managers": managers})
    elif registered is None:
        _print_derived(runs)
    else:
        _print_registered(registered, now)
