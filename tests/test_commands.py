"""Command runs: real processes, their output, limits, exit codes, and their process groups."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from structlog.testing import capture_logs

from helpers import DelegatingRegistry, wait_event, wait_until
from redis_registries import redis_registry, redis_url
from registries import memory_registry, skip_or_fail
from runtrack import (
    BackgroundTaskManager,
    CommandFailed,
    InMemoryRunRegistry,
    OutputChunk,
    OutputTrimming,
    RegistryUnavailableError,
    Run,
    RunRegistry,
    RunStatus,
)
from runtrack._command_output import CommandOutput
from runtrack._logging import get_logger
from runtrack.registry.base import OutputItem
from sql_registries import mysql_registry, postgres_registry, sqlite_registry
from tcp_proxy import tcp_proxy

PY = sys.executable


def py(code: str) -> list[str]:
    """argv running ``code`` with this test's Python."""
    return [PY, "-c", code]


@pytest.fixture
async def manager() -> AsyncIterator[BackgroundTaskManager]:
    async with BackgroundTaskManager(cancel_timeout=30) as m:
        yield m


async def finished(manager: BackgroundTaskManager, run: Run) -> tuple[Run, list[OutputChunk]]:
    done = await manager.wait(run.run_id, timeout=60)
    return done, await manager.registry.get_output(run.run_id)


async def output_of(registry: RunRegistry, run_id: str, at_least: int = 1) -> list[OutputChunk]:
    """The run's output, once it holds ``at_least`` chunks."""
    async with asyncio.timeout(60):
        while True:
            chunks = await registry.get_output(run_id)
            if len(chunks) >= at_least:
                return chunks
            await asyncio.sleep(0.01)


def truncated(run: Run) -> object:
    """``result["output_truncated"]`` of a completed command run."""
    assert isinstance(run.result, dict)
    return run.result["output_truncated"]


def texts(chunks: list[OutputChunk], stream: str | None = None) -> str:
    return "".join(c.text for c in chunks if stream is None or c.stream == stream)


class TestOutput:
    async def test_streams_share_one_sequence_and_keep_their_order(
        self, manager: BackgroundTaskManager
    ) -> None:
        code = (
            "import sys\n"
            "for i in range(2000):\n"
            "    print(f'out {i}', flush=i % 7 == 0)\n"
            "    print(f'err {i}', file=sys.stderr, flush=i % 5 == 0)\n"
        )
        done, chunks = await finished(manager, await manager.run_command(py(code)))

        assert done.status is RunStatus.COMPLETED
        assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
        assert [c.text for c in chunks if c.stream == "stdout"] == [
            f"out {i}\n" for i in range(2000)
        ]
        assert [c.text for c in chunks if c.stream == "stderr"] == [
            f"err {i}\n" for i in range(2000)
        ]

    async def test_result_fields(self, manager: BackgroundTaskManager) -> None:
        code = "x = bytearray(60_000_000)\nsum(range(3_000_000))\nprint('ok')"
        done, chunks = await finished(manager, await manager.run_command(py(code)))

        assert done.status is RunStatus.COMPLETED
        result = done.result
        assert isinstance(result, dict)
        assert set(result) == {"exit_code", "cpu_seconds", "max_rss_bytes", "output_truncated"}
        assert result["exit_code"] == 0
        assert result["output_truncated"] is False
        cpu = result["cpu_seconds"]
        assert isinstance(cpu, float)
        assert 0 < cpu < 60
        assert isinstance(result["max_rss_bytes"], int)
        assert texts(chunks) == "ok\n"

    async def test_unicode_split_across_reads_and_invalid_bytes(
        self, manager: BackgroundTaskManager
    ) -> None:
        code = (
            "import sys, time\n"
            "out = sys.stdout.buffer\n"
            "for piece in [b'caf', b'\\xc3', b'\\xa9 \\xf0\\x9f', b'\\x9a\\x80\\n', "
            "b'bad \\xff\\xfe end\\n', b'nul \\x00\\n', b'tail']:\n"
            "    out.write(piece); out.flush(); time.sleep(0.02)\n"
        )
        done, chunks = await finished(manager, await manager.run_command(py(code)))

        assert done.status is RunStatus.COMPLETED
        assert texts(chunks) == "café 🚀\nbad \ufffd\ufffd end\nnul \ufffd\ntail"
        assert chunks[0].text == "café 🚀\n"

    async def test_a_line_longer_than_a_chunk_is_split(
        self, manager: BackgroundTaskManager
    ) -> None:
        code = "print('é' * 150_000 + 'x')"
        done, chunks = await finished(manager, await manager.run_command(py(code)))

        assert done.status is RunStatus.COMPLETED
        assert texts(chunks) == "é" * 150_000 + "x\n"
        assert len(chunks) == 3
        assert max(len(c.text) for c in chunks) == 64 * 1024

    async def test_output_limit_keeps_the_newest_output_and_bounds_memory(
        self, manager: BackgroundTaskManager
    ) -> None:
        me = psutil.Process()
        before = me.memory_info().rss
        peak = before
        done_event = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done_event.is_set():
                peak = max(peak, me.memory_info().rss)
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        code = (
            "import sys\n"
            "line = ('y' * 999 + '\\n').encode()\n"
            "block = line * 1000\n"
            "for i in range(100):\n"
            "    sys.stdout.buffer.write(block)\n"  # 100 MB in all
            "print('the end')\n"
        )
        limit = 1_000_000
        done, chunks = await finished(
            manager, await manager.run_command(py(code), output_limit=limit)
        )
        done_event.set()
        await sampler

        assert done.status is RunStatus.COMPLETED
        assert truncated(done) is True
        stored = sum(len(c.text.encode()) for c in chunks)
        assert limit - 1000 <= stored <= limit
        assert chunks[-1].text == "the end\n"
        assert [c.seq for c in chunks] == list(range(chunks[0].seq, chunks[-1].seq + 1))
        assert chunks[0].seq > 1  # the start was dropped (what never got written has no seq)
        assert peak - before < 50 * 1024 * 1024

    async def test_small_limit_and_zero_limit(self, manager: BackgroundTaskManager) -> None:
        code = "print('a' * 50); print('bcdefghij')"
        small = await manager.run_command(py(code), output_limit=20)
        nothing = await manager.run_command(py(code), output_limit=0)

        done, chunks = await finished(manager, small)
        assert truncated(done) is True
        assert texts(chunks).endswith("bcdefghij\n")
        assert sum(len(c.text) for c in chunks) <= 20
        done, chunks = await finished(manager, nothing)
        assert truncated(done) is True
        assert chunks == []

    async def test_a_partial_line_is_written_while_the_command_waits(
        self, manager: BackgroundTaskManager, tmp_path: Path
    ) -> None:
        go = tmp_path / "go"
        code = (
            "import os, sys, time\n"
            "sys.stdout.write('prompt> '); sys.stdout.flush()\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        )
        run = await manager.run_command(py(code))
        seen = await output_of(manager.registry, run.run_id)
        go.touch()
        done, chunks = await finished(manager, run)

        assert seen[0].text == "prompt> "
        assert done.status is RunStatus.COMPLETED
        assert texts(chunks) == "prompt> "

    async def test_reaped_by_a_thread_without_pidfd(
        self, manager: BackgroundTaskManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(38, "pidfd_open is not implemented")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
        done, chunks = await finished(
            manager, await manager.run_command(py("import sys; print('ok'); sys.exit(4)"))
        )

        assert texts(chunks) == "ok\n"
        assert done.error_type == "CommandFailed"
        assert "code 4" in (done.error_message or "")


class TestExit:
    async def test_nonzero_exit_fails_with_the_last_stderr_line(
        self, manager: BackgroundTaskManager
    ) -> None:
        code = (
            "import sys; print('first', file=sys.stderr); print('boom!', file=sys.stderr); "
            "sys.exit(3)"
        )
        done, _ = await finished(manager, await manager.run_command(py(code)))

        assert done.status is RunStatus.FAILED
        assert done.error_type == "CommandFailed"
        assert done.error_message is not None
        assert "exited with code 3" in done.error_message
        assert done.error_message.endswith(": boom!")
        result = done.result
        assert isinstance(result, dict)
        assert result["exit_code"] == 3
        assert isinstance(result["cpu_seconds"], float)
        assert isinstance(result["max_rss_bytes"], int)
        assert result["max_rss_bytes"] > 0
        assert result["output_truncated"] is False

    async def test_killed_by_a_signal(self, manager: BackgroundTaskManager) -> None:
        done, _ = await finished(
            manager, await manager.run_command(py("import os; os.kill(os.getpid(), 9)"))
        )

        assert done.status is RunStatus.FAILED
        assert done.error_type == "CommandFailed"
        assert "SIGKILL" in (done.error_message or "")
        assert isinstance(done.result, dict)
        assert done.result["exit_code"] == -9

    def test_command_failed_message(self) -> None:
        assert str(CommandFailed(2, "")) == "the command exited with code 2 (no stderr output)"
        assert "signal SIGTERM (exit code -15): x" in str(CommandFailed(-15, "x"))

    async def test_not_found(self, manager: BackgroundTaskManager) -> None:
        done, _ = await finished(manager, await manager.run_command(["no-such-program-rt"]))

        assert done.status is RunStatus.FAILED
        assert done.error_type == "CommandNotFound"
        assert "no-such-program-rt" in (done.error_message or "")

    async def test_not_executable(self, manager: BackgroundTaskManager, tmp_path: Path) -> None:
        script = tmp_path / "script.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        script.chmod(stat.S_IRUSR | stat.S_IWUSR)
        if os.access(script, os.X_OK):
            pytest.skip("running as a user that may execute anything")

        done, _ = await finished(manager, await manager.run_command([str(script)]))

        assert done.status is RunStatus.FAILED
        assert done.error_type == "CommandNotExecutable"

    async def test_not_a_program(self, manager: BackgroundTaskManager, tmp_path: Path) -> None:
        data = tmp_path / "data.bin"
        data.write_bytes(b"\x00\x01 not an executable format\n")
        data.chmod(stat.S_IRWXU)

        done, _ = await finished(manager, await manager.run_command([str(data)]))

        assert done.status is RunStatus.FAILED
        assert done.error_type == "CommandNotExecutable"
        assert "#!" in (done.error_message or "")


class TestEnvironment:
    async def test_cwd(self, manager: BackgroundTaskManager, tmp_path: Path) -> None:
        real = tmp_path.resolve()  # noqa: ASYNC240 - once, before the run
        done, chunks = await finished(
            manager, await manager.run_command(py("import os; print(os.getcwd())"), cwd=tmp_path)
        )

        assert done.status is RunStatus.COMPLETED
        assert texts(chunks) == f"{real}\n"
        assert done.parameters["cwd"] == str(tmp_path)

    async def test_env_merge_remove_and_no_inherit(
        self, manager: BackgroundTaskManager, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RT_INHERITED", "from-parent")
        monkeypatch.setenv("RT_REMOVED", "gone")
        show = py("import os; print(sorted(k for k in os.environ if k.startswith('RT_')))")
        show_values = py("import os; print(os.environ.get('RT_SECRET'))")

        merged = await manager.run_command(show, env={"RT_SECRET": "s3cret", "RT_REMOVED": None})
        values = await manager.run_command(show_values, env={"RT_SECRET": "s3cret"})
        alone = await manager.run_command(show, env={"RT_ONLY": "1"}, inherit_env=False)
        plain = await manager.run_command(show)

        done, chunks = await finished(manager, merged)
        assert texts(chunks) == "['RT_INHERITED', 'RT_SECRET']\n"
        assert done.parameters["env"] == ["RT_REMOVED", "RT_SECRET"]
        assert "s3cret" not in done.model_dump_json()
        _, chunks = await finished(manager, values)
        assert texts(chunks) == "s3cret\n"
        _, chunks = await finished(manager, alone)
        assert texts(chunks) == "['RT_ONLY']\n"
        _, chunks = await finished(manager, plain)
        assert texts(chunks) == "['RT_INHERITED', 'RT_REMOVED']\n"

    async def test_shell(self, manager: BackgroundTaskManager) -> None:
        run = await manager.run_command("echo $((1 + 2)) | tr 3 x; echo err >&2", shell=True)
        done, chunks = await finished(manager, run)

        assert done.status is RunStatus.COMPLETED
        assert done.name == "sh"
        assert texts(chunks, "stdout") == "x\n"
        assert texts(chunks, "stderr") == "err\n"

    async def test_name_parameters_and_tags(self, manager: BackgroundTaskManager) -> None:
        run = await manager.run_command(["true"], tags={"k": "v"})
        named = await manager.run_command(["true"], name="noop")

        assert run.name == "true"
        assert run.tags == {"k": "v"}
        assert run.parameters["argv"] == ["true"]
        assert run.parameters["shell"] is False
        assert named.name == "noop"
        assert (await manager.wait(run.run_id)).status is RunStatus.COMPLETED

    @pytest.mark.parametrize(
        ("argv", "options", "error", "match"),
        [
            ("ls -l", {}, TypeError, "pass a list, or shell=True"),
            (["ls"], {"shell": True}, TypeError, "one str"),
            ([1, 2], {}, TypeError, "list or tuple of str"),
            (None, {}, TypeError, "list or tuple of str"),
            ([], {}, ValueError, "empty"),
            (["ls"], {"cwd": "/no/such/dir/rt"}, ValueError, "not an existing directory"),
            (["ls"], {"env": {"A": 1}}, TypeError, "must be a str"),
            (["ls"], {"env": ["A"]}, TypeError, "mapping"),
            (["ls"], {"output_limit": -1}, ValueError, "output_limit"),
            (["ls"], {"kill_grace": -1}, ValueError, "kill_grace"),
        ],
    )
    async def test_bad_arguments_are_refused_at_submission(
        self,
        manager: BackgroundTaskManager,
        argv: Any,
        options: dict[str, Any],
        error: type[Exception],
        match: str,
    ) -> None:
        with pytest.raises(error, match=match):
            await manager.run_command(argv, **options)

        assert sum((await manager.registry.count_runs()).values()) == 0


# -- process groups -------------------------------------------------------------------------

#: A leader that prints its pid, then children and grandchildren; all ignore SIGTERM.
TREE = "trap '' TERM; echo $$; sh -c 'sleep 120 & sleep 120' & sleep 120 & wait"


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


async def started_tree(manager: BackgroundTaskManager, run: Run) -> int:
    """The command's pgid, once its whole tree (4 sleeps' parents and sleeps) is up."""
    chunks = await output_of(manager.registry, run.run_id)
    pgid = int(chunks[0].text)
    await wait_until(lambda: len(group_members(pgid)) >= 5, timeout=30, every=0.05)
    return pgid


def assert_group_gone(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert group_members(pgid) == []  # no zombie either


class TestProcessGroup:
    async def test_cancel_kills_the_whole_group(self, manager: BackgroundTaskManager) -> None:
        run = await manager.run_command(TREE, shell=True, kill_grace=0.5)
        pgid = await started_tree(manager, run)

        assert await manager.cancel_task(run.run_id) is True
        done = await manager.wait(run.run_id, timeout=60)

        assert done.status is RunStatus.CANCELLED
        assert_group_gone(pgid)

    async def test_timeout_kills_the_whole_group(self, manager: BackgroundTaskManager) -> None:
        run = await manager.run_command(TREE, shell=True, kill_grace=0.5, timeout=5)
        pgid = await started_tree(manager, run)

        done = await manager.wait(run.run_id, timeout=60)

        assert done.status is RunStatus.FAILED
        assert done.error_type == "TimeoutError"
        assert_group_gone(pgid)

    async def test_sigterm_is_enough_for_a_well_behaved_command(
        self, manager: BackgroundTaskManager
    ) -> None:
        run = await manager.run_command("echo $$; sleep 120 & sleep 120", shell=True, kill_grace=60)
        chunks = await output_of(manager.registry, run.run_id)

        assert await manager.cancel_task(run.run_id) is True  # well before kill_grace

        assert_group_gone(int(chunks[0].text))

    async def test_processes_left_behind_are_stopped(self, manager: BackgroundTaskManager) -> None:
        run = await manager.run_command("echo $$; sleep 120 >/dev/null 2>&1 &", shell=True)
        done, chunks = await finished(manager, run)

        assert done.status is RunStatus.COMPLETED
        assert_group_gone(int(chunks[0].text))

    async def test_shutdown_kills_running_commands(self) -> None:
        manager = BackgroundTaskManager(cancel_timeout=30)
        async with manager:
            run = await manager.run_command(TREE, shell=True, kill_grace=0.2)
            pgid = await started_tree(manager, run)
            await manager.shutdown(grace=0)

        assert (await manager.registry.get_run(run.run_id)).status is RunStatus.CANCELLED  # type: ignore[union-attr]
        assert_group_gone(pgid)


class TestAdmission:
    async def test_500_commands_under_a_group_limit_of_10(self, tmp_path: Path) -> None:
        log = tmp_path / "log"
        script = f"echo + >> {log}; sleep 0.02; echo - >> {log}"
        async with BackgroundTaskManager(group_limits={"cmd": 10}) as manager:
            runs = [
                await manager.run_command(["sh", "-c", script], group="cmd") for _ in range(500)
            ]
            await manager.wait_all(timeout=300)
            statuses = [(await manager.registry.get_run(r.run_id)).status for r in runs]  # type: ignore[union-attr]

        assert statuses == [RunStatus.COMPLETED] * 500
        alive = most = 0
        for line in log.read_text().split():
            alive += 1 if line == "+" else -1
            most = max(most, alive)
        assert alive == 0
        assert 1 < most <= 10


# -- other registries -------------------------------------------------------------------------

BACKENDS: list[tuple[str, Callable[[], AbstractAsyncContextManager[RunRegistry]]]] = [
    ("memory", memory_registry),
    ("sqlite", sqlite_registry),
    ("postgresql", postgres_registry),
    ("mariadb", mysql_registry),
    ("redis", redis_registry),
]


@pytest.mark.parametrize("factory", [f for _, f in BACKENDS], ids=[i for i, _ in BACKENDS])
async def test_output_and_trimming_on_each_backend(
    factory: Callable[[], AbstractAsyncContextManager[RunRegistry]],
) -> None:
    code = (
        "import sys, time\n"
        "for i in range(3000):\n"
        "    print(f'line {i:05d} ' + 'z' * 90)\n"
        "    if i % 500 == 0: sys.stdout.flush(); time.sleep(0.1)\n"
        "print('to stderr', file=sys.stderr)\n"
    )
    async with factory() as registry, BackgroundTaskManager(registry) as manager:
        small = await manager.run_command(py(code), output_limit=50_000)
        whole = await manager.run_command(py(code), output_limit=10_000_000)
        done, chunks = await finished(manager, small)
        all_done, all_chunks = await finished(manager, whole)

    assert done.status is RunStatus.COMPLETED
    assert truncated(done) is True
    assert 40_000 < sum(len(c.text) for c in chunks) <= 50_000
    assert [c.seq for c in chunks] == list(range(chunks[0].seq, chunks[-1].seq + 1))
    assert chunks[-1].text == "to stderr\n"
    assert chunks[-2].text.startswith("line 02999 ")
    assert truncated(all_done) is False
    assert len(all_chunks) == 3001
    assert [c.seq for c in all_chunks] == list(range(1, 3002))


# -- registry outage ----------------------------------------------------------------------------


@asynccontextmanager
async def _proxied_redis() -> AsyncIterator[tuple[RunRegistry, RunRegistry, Any]]:
    pytest.importorskip("redis")
    from runtrack.registry.redis import RedisRunRegistry

    url = redis_url()
    parts = urlsplit(url)
    prefix = f"rt-cmd-outage:{uuid.uuid4().hex}:"
    direct = RedisRunRegistry(url, prefix=prefix)
    try:
        await direct.count_runs()
    except RegistryUnavailableError as exc:
        await direct.aclose()
        skip_or_fail(f"Redis at {url} unreachable: {exc}")
    async with tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        through = parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
        proxied = RedisRunRegistry(through, prefix=prefix)
        try:
            yield proxied, direct, proxy
        finally:
            await proxied.aclose()
            client: Any = direct._client  # test cleanup only
            keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            await direct.aclose()


async def test_a_registry_outage_loses_no_output() -> None:
    code = (
        "import time\n"
        "for i in range(400):\n"
        "    print(f'line {i}', flush=True)\n"
        "    time.sleep(0.01)\n"
    )
    async with _proxied_redis() as (proxied, direct, proxy):
        async with BackgroundTaskManager(proxied, registry_timeout=60) as manager:
            run = await manager.run_command(py(code))
            await output_of(direct, run.run_id, at_least=20)
            with capture_logs() as logs:
                proxy.cut()
                await asyncio.sleep(1.5)  # the outage lasts while the command prints
                proxy.restore()
                await manager.wait(run.run_id, timeout=120)

        done = await direct.get_run(run.run_id)
        chunks = await direct.get_output(run.run_id)

    assert done is not None
    assert done.status is RunStatus.COMPLETED
    assert [c.text for c in chunks] == [f"line {i}\n" for i in range(400)]
    assert "command_output_delayed" in [entry["event"] for entry in logs]  # it did wait


class _GatedRegistry(InMemoryRunRegistry):
    """The memory registry, whose appends wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.appending = asyncio.Event()

    async def append_output(self, run_id: str, chunks: Iterable[OutputItem]) -> list[OutputChunk]:
        self.appending.set()
        await self.gate.wait()
        return await super().append_output(run_id, chunks)


async def test_output_dropped_while_its_write_was_in_flight_is_trimmed() -> None:
    registry = _GatedRegistry()
    run = Run(name="cmd")
    await registry.add_run(run)
    output = CommandOutput(registry, run.run_id, 100, get_logger())
    writer = asyncio.create_task(output.run())
    first, then = ("".join(c * 19 + "\n" for c in letters) for letters in ("abcde", "fghij"))
    output.feed("stdout", first.encode())  # 100 bytes: the limit
    await wait_event(registry.appending)
    output.feed("stdout", then.encode())  # every in-flight chunk falls out meanwhile
    registry.gate.set()
    output.close()
    await asyncio.wait_for(writer, 30)

    chunks = await registry.get_output(run.run_id)

    assert "".join(c.text for c in chunks) == then
    assert [c.seq for c in chunks] == [6, 7, 8, 9, 10]
    assert output.truncated is True


class _LossyRegistry(InMemoryRunRegistry):
    """The memory registry, whose first append fails as a cut connection does.

    With ``lands=True`` the append is stored and only its reply is lost.
    """

    def __init__(self, *, lands: bool) -> None:
        super().__init__()
        self.lands = lands
        self.failed = asyncio.Event()

    async def append_output(self, run_id: str, chunks: Iterable[OutputItem]) -> list[OutputChunk]:
        if self.failed.is_set():
            return await super().append_output(run_id, chunks)
        self.failed.set()
        if self.lands:
            await super().append_output(run_id, chunks)
        raise ConnectionError("connection reset by peer")


@pytest.mark.parametrize("lands", [True, False], ids=["reply-lost", "not-written"])
async def test_an_append_that_failed_ambiguously_is_stored_once(lands: bool) -> None:
    registry = _LossyRegistry(lands=lands)
    run = Run(name="cmd")
    await registry.add_run(run)
    output = CommandOutput(registry, run.run_id, 10_000, get_logger())
    writer = asyncio.create_task(output.run())
    output.feed("stdout", b"one\ntwo\n")
    await wait_event(registry.failed)
    output.feed("stdout", b"three\n")
    output.close()
    await asyncio.wait_for(writer, 30)

    chunks = await registry.get_output(run.run_id)

    assert [(c.seq, c.text) for c in chunks] == [(1, "one\n"), (2, "two\n"), (3, "three\n")]


async def test_output_that_fell_out_during_an_outage_is_never_written() -> None:
    registry = _LossyRegistry(lands=False)
    run = Run(name="cmd")
    await registry.add_run(run)
    output = CommandOutput(registry, run.run_id, 100, get_logger())
    writer = asyncio.create_task(output.run())
    first, then = ("".join(c * 19 + "\n" for c in letters) for letters in ("abcde", "fghij"))
    output.feed("stdout", first.encode())
    await wait_event(registry.failed)
    output.feed("stdout", then.encode())  # the failed batch falls out before its retry
    output.close()
    await asyncio.wait_for(writer, 30)

    chunks = await registry.get_output(run.run_id)

    assert "".join(c.text for c in chunks) == then
    assert [c.seq for c in chunks] == [1, 2, 3, 4, 5]


async def test_a_registry_without_trimming_gets_all_output_written_and_memory_stays_bounded() -> (
    None
):
    registry = DelegatingRegistry()
    assert not isinstance(registry, OutputTrimming)
    code = "for i in range(2000): print(f'{i:09d}')"  # 20 kB
    async with BackgroundTaskManager(registry) as manager:
        run = await manager.run_command(py(code), output_limit=1000)
        done = await manager.wait(run.run_id, timeout=60)
    chunks = await registry.get_output(run.run_id)

    assert done.status is RunStatus.COMPLETED
    assert truncated(done) is True
    assert chunks[-1].text == "000001999\n"  # the newest output is there, however trimmed
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
