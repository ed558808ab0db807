"""The ``runtrack`` command, run as a subprocess against SQLite, PostgreSQL and Redis.

Fast checks of parsing and formatting use click's `CliRunner` in-process; everything that
touches a registry runs ``python -m runtrack`` for real. ``runtrack run`` needs
``BackgroundTaskManager.run_command`` (command runs); the pseudo-terminal tests (``watch``,
``output --follow``, Ctrl-C) are in ``test_cli_tty.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from click.testing import CliRunner

import runtrack
from cli_helpers import COMMAND, Backend, cli_env, run_cli, seed
from helpers import SAFETY, DelegatingRegistry
from runtrack import BackgroundTaskManager, InMemoryRunRegistry, ManagerInfo, Run, RunStatus
from runtrack._models import utcnow
from runtrack.cli import cli
from runtrack.cli._app import mask_url
from runtrack.cli._durations import parse_duration
from runtrack.cli._format import detail, seconds
from runtrack.cli._run import exit_code_of
from runtrack.cli._runs import list_command
from runtrack.cli._stats import active_owners, find_managers
from runtrack.registry.base import ManagerPresence


async def register_silent(registry: object, owner: str, *, silent_for: float, lease: float) -> None:
    """Register ``owner`` as a manager last heard of ``silent_for`` seconds ago."""
    assert isinstance(registry, ManagerPresence)
    beat = utcnow() - timedelta(seconds=silent_for)
    await registry.register_manager(
        ManagerInfo(owner=owner, started_at=beat, heartbeat_at=beat, lease_seconds=lease)
    )


# -- in-process: parsing and formatting ---------------------------------------------------------


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("30s", timedelta(seconds=30)),
            ("15m", timedelta(minutes=15)),
            ("2h", timedelta(hours=2)),
            ("7d", timedelta(days=7)),
            ("1w", timedelta(weeks=1)),
            ("1h30m", timedelta(minutes=90)),
            ("0.5s", timedelta(milliseconds=500)),
            (" 2H ", timedelta(hours=2)),
            ("0s", timedelta(0)),
        ],
    )
    def test_parses(self, text: str, expected: timedelta) -> None:
        assert parse_duration(text) == expected

    @pytest.mark.parametrize("text", ["", "7", "d", "7x", "-1d", "1d2", "1 d", "s30", "1.d"])
    def test_refuses(self, text: str) -> None:
        with pytest.raises(ValueError, match="is not a duration: use a number and a unit"):
            parse_duration(text)

    def test_bad_option_is_a_usage_error(self) -> None:
        result = CliRunner().invoke(cli, ["--registry", "memory://", "prune", "--older-than", "7x"])

        assert result.exit_code == 2
        assert "Usage: runtrack prune" in result.output
        assert "'7x' is not a duration" in result.output


class TestFormatting:
    def test_mask_url(self) -> None:
        assert mask_url("postgresql+asyncpg://app:s3cret@db:5432/x") == (
            "postgresql+asyncpg://app:***@db:5432/x"
        )
        assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
        assert mask_url("redis://host:6379/0") == "redis://host:6379/0"
        assert mask_url("sqlite+aiosqlite:///runs.db") == "sqlite+aiosqlite:///runs.db"

    @pytest.mark.parametrize(
        ("fields", "code"),
        [
            ({"status": RunStatus.COMPLETED, "result": {"exit_code": 0}}, 0),
            ({"status": RunStatus.COMPLETED}, 0),
            ({"status": RunStatus.FAILED, "result": {"exit_code": 3}}, 3),
            ({"status": RunStatus.FAILED, "result": {"exit_code": -9}}, 137),
            ({"status": RunStatus.FAILED, "error_type": "CommandNotFound"}, 127),
            ({"status": RunStatus.FAILED, "error_type": "CommandNotExecutable"}, 126),
            ({"status": RunStatus.FAILED, "error_type": "TimeoutError"}, 124),
            ({"status": RunStatus.FAILED, "error_type": "OSError"}, 1),
            (
                {
                    "status": RunStatus.FAILED,
                    "error_type": "CommandFailed",
                    "error_message": "the command exited with code 5: boom",
                },
                5,
            ),
            (
                {
                    "status": RunStatus.FAILED,
                    "error_type": "CommandFailed",
                    "error_message": "the command was killed by signal SIGTERM (exit code -15)",
                },
                143,
            ),
            ({"status": RunStatus.CANCELLED}, 1),
        ],
    )
    def test_exit_code_of(self, fields: dict[str, object], code: int) -> None:
        assert exit_code_of(Run(name="cmd", **fields)) == code

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            (None, "-"),
            (0.25, "250ms"),
            (timedelta(seconds=12.34), "12.3s"),
            (timedelta(minutes=4, seconds=5), "4m05s"),
            (timedelta(hours=2, minutes=10), "2h10m"),
            (timedelta(days=3, hours=4), "3d04h"),
        ],
    )
    def test_seconds(self, value: timedelta | float | None, shown: str) -> None:
        assert seconds(value) == shown

    @pytest.mark.parametrize(
        ("fields", "shown"),
        [
            ({"status": RunStatus.FAILED, "error_type": "ValueError"}, "ValueError"),
            ({"status": RunStatus.FAILED}, "error"),
            ({"status": RunStatus.COMPLETED}, "done"),
            ({"status": RunStatus.COMPLETED, "result": {"n": "é"}}, '{"n": "é"}'),
            ({"status": RunStatus.CANCELLED}, "cancelled before it started"),
            ({"status": RunStatus.QUEUED, "group": "exports"}, "waiting (group exports)"),
            ({"status": RunStatus.QUEUED}, "waiting"),
            ({"status": RunStatus.RUNNING, "progress_message": "half"}, "half"),
        ],
    )
    def test_detail(self, fields: dict[str, object], shown: str) -> None:
        assert detail(Run(name="x", **fields)) == shown

    def test_mask_url_of_a_malformed_url(self) -> None:
        assert mask_url("postgresql+asyncpg://u:pw@[::1/db") == "<malformed URL>"

    def test_subcommand_without_the_group_uses_the_default_registry(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)

        result = CliRunner().invoke(list_command, ["--json"])

        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {"runs": [], "count": 0}
        assert (tmp_path / "runtrack.db").exists()

    def test_unexpected_error_is_one_line(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def broken(*args: object, **kwargs: object) -> list[Run]:
            raise RuntimeError("first line\nsecond line")

        async def leaky(*args: object, **kwargs: object) -> list[Run]:
            raise RuntimeError("cannot log in to postgresql://app:s3cret-pw@db/app")

        monkeypatch.setattr(InMemoryRunRegistry, "list_runs", broken)

        plain = CliRunner().invoke(cli, ["--registry", "memory://", "list"])
        debug = CliRunner().invoke(cli, ["--registry", "memory://", "--debug", "list"])

        assert plain.exit_code == 1
        assert plain.output == "error: RuntimeError: first line\n"
        assert debug.exit_code == 1
        assert "Traceback" in debug.output
        assert debug.output.endswith("error: RuntimeError: first line\n")

        from runtrack.registry.sql import SQLRunRegistry

        monkeypatch.setattr(SQLRunRegistry, "list_runs", leaky)
        url = "postgresql+asyncpg://app:s3cret-pw@db/app"
        masked = CliRunner().invoke(cli, ["--registry", url, "list"])

        assert masked.exit_code == 1
        assert "s3cret-pw" not in masked.output
        assert "app:***@db" in masked.output

    def test_active_owners(self) -> None:
        runs = [
            Run(name="a", status=RunStatus.RUNNING, owner="m1"),
            Run(name="b", status=RunStatus.RUNNING, owner="m2"),
            Run(name="c", status=RunStatus.RUNNING, owner="m2"),
        ]

        rows = active_owners(runs)

        assert [(row["owner"], row["running"]) for row in rows] == [("m2", 2), ("m1", 1)]

    def test_help_lists_every_subcommand(self) -> None:
        result = CliRunner().invoke(cli, ["--help"])

        assert result.exit_code == 0
        for name in [
            "list", "show", "output", "cancel", "prune", "stats", "watch", "run",
            "managers", "serve", "demo",
        ]:  # fmt: skip
            assert f"\n  {name} " in result.output

    def test_tag_needs_key_and_value(self) -> None:
        result = CliRunner().invoke(cli, ["--registry", "memory://", "list", "--tag", "nokey"])

        assert result.exit_code == 2
        assert "'nokey' is not key=value" in result.output


# -- subprocess: every backend ---------------------------------------------------------------


async def test_list(cli_backend: Backend) -> None:
    registry = cli_backend.registry
    old = await seed(registry, "export", RunStatus.COMPLETED, age=timedelta(minutes=5))
    failed = await seed(registry, "export", RunStatus.FAILED, tags={"team": "ml"})
    running = await seed(registry, "train", RunStatus.RUNNING, progress=0.5)

    table = await run_cli(cli_backend.env(), "list")
    every = await run_cli(cli_backend.env(), "list", "--json")
    filtered = await run_cli(
        cli_backend.env(), "list", "--json", "--name", "export", "--status", "failed"
    )
    tagged = await run_cli(cli_backend.env(), "list", "--json", "--tag", "team=ml")
    limited = await run_cli(cli_backend.env(), "list", "--json", "--limit", "1")

    assert table.code == 0, table.err
    for run in (old, failed, running):
        assert run.run_id in table.out
    assert "ValueError: bad input" in table.out
    assert " 50%" in table.out
    listed = json.loads(every.out)
    assert listed["count"] == 3
    assert [run["run_id"] for run in listed["runs"]] == [
        running.run_id,
        failed.run_id,
        old.run_id,
    ]
    assert listed["runs"][1] == failed.model_dump(mode="json")
    assert [run["run_id"] for run in json.loads(filtered.out)["runs"]] == [failed.run_id]
    assert [run["run_id"] for run in json.loads(tagged.out)["runs"]] == [failed.run_id]
    assert [run["run_id"] for run in json.loads(limited.out)["runs"]] == [running.run_id]


async def test_show(cli_backend: Backend) -> None:
    run = await seed(cli_backend.registry, "export", RunStatus.FAILED, parameters={"n": 1})

    shown = await run_cli(cli_backend.env(), "show", run.run_id)
    as_json = await run_cli(cli_backend.env(), "show", run.run_id, "--json")
    missing = await run_cli(cli_backend.env(), "show", "no-such-run")

    assert shown.code == 0, shown.err
    assert run.run_id in shown.out
    assert "bad input" in shown.out
    assert json.loads(as_json.out) == run.model_dump(mode="json")
    assert missing.code == 4
    assert missing.out == ""
    assert missing.err.count("\n") == 1
    assert "no run 'no-such-run'" in missing.err


async def test_output(cli_backend: Backend) -> None:
    run = await seed(cli_backend.registry, "cmd", RunStatus.COMPLETED)
    await cli_backend.registry.append_output(
        run.run_id, [("stdout", "one\n"), ("stderr", "oops é\n"), ("stdout", "two\n")]
    )

    everything = await run_cli(cli_backend.env(), "output", run.run_id)
    later = await run_cli(cli_backend.env(), "output", run.run_id, "--since", "2")
    missing = await run_cli(cli_backend.env(), "output", "no-such-run")

    assert everything.code == 0, everything.err
    assert everything.out == "one\ntwo\n"
    assert everything.err == "oops é\n"
    assert later.out == "two\n"
    assert later.err == ""
    assert missing.code == 4


async def test_output_follow_ends_with_the_run(cli_backend: Backend) -> None:
    run = await seed(cli_backend.registry, "cmd", RunStatus.FAILED)
    await cli_backend.registry.append_output(run.run_id, [("stdout", "done\n")])

    followed = await run_cli(cli_backend.env(), "output", run.run_id, "--follow")

    assert followed.out == "done\n"
    assert followed.code == 1


async def test_cancel(cli_backend: Backend) -> None:
    registry = cli_backend.registry
    running = await seed(registry, "train", RunStatus.RUNNING, owner="another-process")
    queued = await seed(registry, "train", RunStatus.QUEUED)
    finished = await seed(registry, "train", RunStatus.COMPLETED)

    first = await run_cli(cli_backend.env(), "cancel", running.run_id)
    second = await run_cli(cli_backend.env(), "cancel", queued.run_id)
    too_late = await run_cli(cli_backend.env(), "cancel", finished.run_id)
    missing = await run_cli(cli_backend.env(), "cancel", "no-such-run")

    assert first.code == 0, first.err
    assert second.code == 0, second.err
    for run in (running, queued):
        record = await registry.get_run(run.run_id)
        assert record is not None
        assert record.status is RunStatus.CANCELLED
    assert too_late.code == 1
    assert "already completed" in too_late.err
    still = await registry.get_run(finished.run_id)
    assert still is not None
    assert still.status is RunStatus.COMPLETED
    assert missing.code == 4


async def test_dead_letters_list_and_requeue(cli_backend: Backend) -> None:
    registry = cli_backend.registry
    args = {"args": [7], "kwargs": {"currency": "EUR"}}
    dead = await seed(registry, "charge", RunStatus.FAILED, task="charge", args=args, priority=2)
    dead = await registry.update_run(dead.run_id, dead=True)
    other = await seed(registry, "charge", RunStatus.FAILED)
    active = await seed(registry, "charge", RunStatus.RUNNING, task="charge", args=args)

    listed = await run_cli(cli_backend.env(), "list", "--dead", "--json")
    requeued = await run_cli(cli_backend.env(), "requeue", dead.run_id, "--json")
    plain = await run_cli(cli_backend.env(), "requeue", dead.run_id)
    local = await run_cli(cli_backend.env(), "requeue", other.run_id)
    running = await run_cli(cli_backend.env(), "requeue", active.run_id)
    missing = await run_cli(cli_backend.env(), "requeue", "no-such-run")
    bad_delay = await run_cli(cli_backend.env(), "requeue", dead.run_id, "--delay", "soon")
    before = utcnow()
    delayed = await run_cli(cli_backend.env(), "requeue", dead.run_id, "--delay", "2h", "--json")

    assert listed.code == 0, listed.err
    assert [run["run_id"] for run in json.loads(listed.out)["runs"]] == [dead.run_id]
    assert requeued.code == 0, requeued.err
    new = Run.model_validate(json.loads(requeued.out))
    assert (new.status, new.task, new.args, new.priority) == (RunStatus.QUEUED, "charge", args, 2)
    assert new.requeued_from == dead.run_id
    assert await registry.get_run(new.run_id) == new
    assert plain.code == 0, plain.err
    assert plain.out.startswith(f"requeued {dead.run_id} as ")
    assert local.code == 1
    assert "not a run of a durable task" in local.err
    assert running.code == 1
    assert "only finished runs can be requeued" in running.err
    assert missing.code == 4
    assert bad_delay.code == 2
    assert delayed.code == 0, delayed.err  # recorded at once: the command does not wait
    later = Run.model_validate(json.loads(delayed.out))
    assert later.not_before is not None
    assert before + timedelta(hours=2) <= later.not_before <= utcnow() + timedelta(hours=2)
    assert await registry.get_run(later.run_id) == later
    # three requeues, no more: the refused ones recorded nothing
    assert len(await registry.list_runs(status=RunStatus.QUEUED)) == 3


async def test_prune(cli_backend: Backend) -> None:
    registry = cli_backend.registry
    old = [
        await seed(registry, "job", RunStatus.COMPLETED, age=timedelta(days=9)) for _ in range(3)
    ]
    recent = await seed(registry, "job", RunStatus.COMPLETED, age=timedelta(hours=1))
    running = await seed(registry, "job", RunStatus.RUNNING, age=timedelta(days=30))

    kept_one = await run_cli(cli_backend.env(), "prune", "--older-than", "7d", "--keep", "2")
    rest = await run_cli(cli_backend.env(), "prune", "--older-than", "7d")

    assert kept_one.code == 0, kept_one.err
    assert kept_one.out == "deleted 2 runs\n"
    assert rest.out == "deleted 1 run\n"
    for run in old:
        assert await registry.get_run(run.run_id) is None
    assert await registry.get_run(recent.run_id) is not None
    assert await registry.get_run(running.run_id) is not None


async def test_stats(cli_backend: Backend) -> None:
    registry = cli_backend.registry
    await seed(registry, "export", RunStatus.COMPLETED)
    await seed(registry, "export", RunStatus.FAILED)
    await seed(registry, "train", RunStatus.RUNNING)

    table = await run_cli(cli_backend.env(), "stats")
    as_json = await run_cli(cli_backend.env(), "stats", "--json")

    assert table.code == 0, table.err
    assert "completed 1  failed 1" in table.out
    assert "load " in table.out
    stats = json.loads(as_json.out)
    assert stats["counts"] == {
        "queued": 0,
        "running": 1,
        "completed": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert stats["total"] == 3
    assert stats["by_name"]["export"]["failed"] == 1
    assert stats["by_name"]["train"]["running"] == 1
    assert stats["system"]["cpu_count"] >= 1
    assert stats["system"]["memory_total_bytes"] > 0
    assert {"load_1m", "load_5m", "load_15m", "memory_available_bytes"} <= set(stats["system"])


async def test_managers(cli_backend: Backend) -> None:
    registry = cli_backend.registry
    gate = asyncio.Event()
    async with BackgroundTaskManager(
        registry, owner="here", max_concurrency=5, heartbeat_interval=0.2, lease=120
    ) as manager:
        manager.start_task(Run(name="wait"), gate.wait())
        manager.start_task(Run(name="wait"), gate.wait())
        assert isinstance(registry, ManagerPresence)
        # The running count comes with a heartbeat, which sets no event: read the registry
        # until it shows (bounded by SAFETY).
        async with asyncio.timeout(SAFETY):
            while [m.running for m in await registry.list_managers() if m.owner == "here"] != [2]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        table = await run_cli(cli_backend.env(), "managers")
        as_json = await run_cli(cli_backend.env(), "managers", "--json")
        gate.set()
    # a manager that stopped heartbeating, with no survivor left to sweep it
    await register_silent(registry, "gone", silent_for=3600, lease=30)
    after = await run_cli(cli_backend.env(), "managers")
    after_json = await run_cli(cli_backend.env(), "managers", "--json")

    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split()[:4] == ["OWNER", "HOST", "PID", "STARTED"]
    (here_line,) = [line for line in lines if line.startswith("here ")]
    assert f" {socket.gethostname()} " in here_line
    assert f" {os.getpid()} " in here_line
    assert " 2 / 5 " in here_line
    assert "late" not in here_line
    (here,) = json.loads(as_json.out)["managers"]
    assert here["owner"] == "here"
    assert here["host"] == socket.gethostname()
    assert here["pid"] == os.getpid()
    assert (here["running"], here["max_concurrency"], here["late"]) == (2, 5, False)
    assert here["heartbeat_at"].endswith("Z")
    assert here["started_at"].endswith("Z")
    assert here["lease_seconds"] > 0
    # a clean shutdown removes the manager's row; a late one is flagged
    (gone,) = json.loads(after_json.out)["managers"]
    assert (gone["owner"], gone["late"], gone["max_concurrency"]) == ("gone", True, None)
    assert gone["lease_seconds"] == 30
    (gone_line,) = [line for line in after.out.splitlines() if line.startswith("gone ")]
    assert "1h00m ago late" in gone_line
    assert " 0 / ∞ " in gone_line
    assert "here" not in after.out


async def test_managers_from_runs_without_presence() -> None:
    """A registry that keeps no managers: they are found from the RUNNING runs' owners."""
    registry = DelegatingRegistry()
    assert not isinstance(registry, ManagerPresence)
    for owner in ("host-a:1", "host-b:2", "host-b:2"):
        await seed(registry, "job", RunStatus.RUNNING, owner=owner)
    await seed(registry, "job", RunStatus.COMPLETED, owner="host-c:3")

    registered, runs = await find_managers(registry)

    assert registered is None
    rows = active_owners(runs)
    assert [(m["owner"], m["running"]) for m in rows] == [("host-b:2", 2), ("host-a:1", 1)]


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app:s3cret-pw@127.0.0.1:1/test",
        "mysql+asyncmy://app:s3cret-pw@127.0.0.1:1/test",
        "redis://:s3cret-pw@127.0.0.1:1/0",
    ],
    ids=["postgresql", "mysql", "redis"],
)
async def test_unreachable_registry(url: str, tmp_path: Path) -> None:
    result = await run_cli(cli_env(url), "list", cwd=tmp_path)

    assert result.code == 3
    assert result.out == ""
    assert result.err.count("\n") == 1, result.err
    assert result.err.startswith("error: ")
    assert "127.0.0.1:1" in result.err
    assert url.partition(":")[0].partition("+")[0] in result.err  # the backend
    assert "s3cret-pw" not in result.err
    assert "Traceback" not in result.err


async def test_serve_needs_the_registry_at_startup(tmp_path: Path) -> None:
    url = "redis://:s3cret-pw@127.0.0.1:1/0"

    result = await run_cli(cli_env(url), "serve", "--port", str(_free_port()), cwd=tmp_path)

    assert result.code == 3
    assert result.err.count("\n") == 1, result.err
    assert "s3cret-pw" not in result.err


async def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://app:s3cret-pw@127.0.0.1:1/test"

    result = await run_cli(cli_env(url), "--debug", "list", cwd=tmp_path)

    assert result.code == 3
    assert "Traceback" in result.err
    assert result.err.splitlines()[-1].startswith("error: ")


async def test_misconfigured_sqlite_is_exit_3(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/missing-folder/runs.db"

    result = await run_cli(cli_env(url), "stats")

    assert result.code == 3
    assert "missing-folder" in result.err
    assert result.err.count("\n") == 1, result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--status", "bogus"], "Invalid value for '--status'"),
        (["list", "--limit", "0"], "Invalid value for '--limit'"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
        (["show"], "Missing argument 'RUN_ID'"),
        (["--registry", "postgres://x:s3cret-pw@h/db", "list"], "Invalid value for --registry"),
        (["run"], "Missing argument"),
    ],
)
async def test_usage_errors(args: list[str], message: str, sqlite_cli: Backend) -> None:
    result = await run_cli(sqlite_cli.env(), *args)

    assert result.code == 2
    assert "Usage: runtrack" in result.err
    assert message in result.err
    assert "s3cret-pw" not in result.err


async def test_default_registry_and_version(tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env("unused").items() if k != "RUNTRACK_REGISTRY_URL"}

    version = await run_cli(env, "--version", cwd=tmp_path)
    listed = await run_cli(env, "list", "--json", cwd=tmp_path)

    assert version.out.strip() == f"runtrack, version {runtrack.__version__}"
    assert listed.code == 0, listed.err
    assert json.loads(listed.out) == {"runs": [], "count": 0}
    assert (tmp_path / "runtrack.db").exists()


async def test_registry_option_beats_the_environment(sqlite_cli: Backend, tmp_path: Path) -> None:
    run = await seed(sqlite_cli.registry, "job")
    env = cli_env(f"sqlite+aiosqlite:///{tmp_path}/other.db")

    result = await run_cli(env, "--registry", sqlite_cli.url, "show", run.run_id, "--json")

    assert result.code == 0, result.err
    assert json.loads(result.out)["run_id"] == run.run_id


# -- serve and demo ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_serve(sqlite_cli: Backend) -> None:
    run = await seed(sqlite_cli.registry, "export", RunStatus.COMPLETED)
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        "serve",
        "--port",
        str(port),
        env=sqlite_cli.env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            banner = await proc.stderr.readline()
        assert f"http://127.0.0.1:{port}/" in banner.decode()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(30):
                while True:
                    try:
                        health = await client.get("/health")
                        break
                    except httpx.ConnectError:
                        await asyncio.sleep(0.1)
            runs = await client.get("/runs")
            dashboard = await client.get("/", follow_redirects=True)
        assert health.json()["registry"] == "ok"
        assert [r["run_id"] for r in runs.json()["runs"]] == [run.run_id]
        assert dashboard.status_code == 200
        assert "text/html" in dashboard.headers["content-type"]
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            code = await proc.wait()
    assert code == 0


async def test_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env("unused").items() if k != "RUNTRACK_REGISTRY_URL"}

    result = await run_cli(env, "demo", cwd=tmp_path, timeout=120)

    assert result.code == 0, result.err
    assert "Finished 20 runs" in result.out
    assert "Retried: sync_inventory completed on attempt 3/3" in result.out
    assert (tmp_path / "runtrack-demo.db").exists()
    listed = await run_cli(
        cli_env(f"sqlite+aiosqlite:///{tmp_path / 'runtrack-demo.db'}"), "stats", "--json"
    )
    assert json.loads(listed.out)["total"] == 20


# -- runtrack run (needs command runs) ---------------------------------------------------------


async def test_run_streams_and_exits_with_the_code(cli_backend: Backend) -> None:
    script = "import sys; print('out 1', flush=True); print('err 1', file=sys.stderr); sys.exit(3)"

    result = await run_cli(
        cli_backend.env(), "run", "--name", "script", "--", sys.executable, "-c", script
    )

    assert result.code == 3, result.err
    assert result.out == "out 1\n"
    assert result.err == "err 1\n"
    [run] = await cli_backend.registry.list_runs(name="script")
    assert run.status is RunStatus.FAILED
    assert run.error_type == "CommandFailed"
    chunks = await cli_backend.registry.get_output(run.run_id)
    assert {(c.stream, c.text) for c in chunks} == {("stdout", "out 1\n"), ("stderr", "err 1\n")}


async def test_run_success_and_failures(sqlite_cli: Backend) -> None:
    ok = await run_cli(sqlite_cli.env(), "run", "--", "sh", "-c", "echo hello")
    missing = await run_cli(sqlite_cli.env(), "run", "--", "no-such-command-xyz")
    slow = await run_cli(sqlite_cli.env(), "run", "--timeout", "1s", "--", "sleep", "60")

    assert (ok.code, ok.out) == (0, "hello\n"), ok.err
    assert missing.code == 127
    assert "CommandNotFound" in missing.err
    assert slow.code == 124
    assert "TimeoutError" in slow.err
    statuses = {run.name: run.status for run in await sqlite_cli.registry.list_runs()}
    assert RunStatus.COMPLETED in statuses.values()
    assert list(statuses.values()).count(RunStatus.FAILED) == 2


async def test_run_sigint_cancels_the_run(sqlite_cli: Backend) -> None:
    # The shell prints its pid and its child's, then waits: both must be gone afterwards.
    script = "sleep 300 & echo $$ $!; wait"
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        "run",
        "--name",
        "sleeper",
        "--",
        "sh",
        "-c",
        script,
        env=sqlite_cli.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(SAFETY * 3):
        line = await proc.stdout.readline()
    pids = [int(pid) for pid in line.split()]
    assert len(pids) == 2
    assert all(psutil.pid_exists(pid) for pid in pids)

    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(SAFETY * 3):
        _, err = await proc.communicate()

    assert proc.returncode == 130, err
    assert b"cancelled run" in err
    [run] = await sqlite_cli.registry.list_runs(name="sleeper")
    assert run.status is RunStatus.CANCELLED
    for pid in pids:
        assert not _alive(pid)


async def test_run_cancelled_from_another_process(sqlite_cli: Backend) -> None:
    script = "echo started; exec sleep 300"
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        "run",
        "--name",
        "long",
        "--",
        "sh",
        "-c",
        script,
        env=sqlite_cli.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(SAFETY * 3):
        assert await proc.stdout.readline() == b"started\n"
    [run] = await sqlite_cli.registry.list_runs(name="long")

    cancelled = await run_cli(sqlite_cli.env(), "cancel", run.run_id)
    async with asyncio.timeout(SAFETY * 3):
        _, err = await proc.communicate()

    assert cancelled.code == 0, cancelled.err
    assert proc.returncode == 1
    assert f"error: run {run.run_id} was cancelled" in err.decode()
    record = await sqlite_cli.registry.get_run(run.run_id)
    assert record is not None
    assert record.status is RunStatus.CANCELLED


async def test_run_into_a_closed_pipe_cancels_the_run(sqlite_cli: Backend) -> None:
    # `head` exits after two lines: runtrack stops the endless command and ends quietly.
    command = " ".join([*COMMAND, "run", "--name", "endless", "--", "yes"]) + " | head -n 2"
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"set -o pipefail; {command}",
        env=sqlite_cli.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(SAFETY * 6):
        out, err = await proc.communicate()

    assert out == b"y\ny\n"
    assert proc.returncode == 141, err
    assert b"Traceback" not in err
    [run] = await sqlite_cli.registry.list_runs(name="endless")
    assert run.status is RunStatus.CANCELLED


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting for its parent."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_python_m_runtrack_is_the_console_script() -> None:
    script = Path(sys.executable).with_name("runtrack")

    assert script.exists()
    assert os.access(script, os.X_OK)
