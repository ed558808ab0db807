"""Command runs: `BackgroundTaskManager.run_command` runs a program as a tracked run.

The command is submitted as an ordinary run (so admission, limits, priority, timeout,
cancellation and shutdown apply as to any run) whose code starts the process in a session
of its own, records its output (see `runtrack._command_output`), reaps it with ``wait4``
(its CPU time comes from the kernel; its memory is sampled with psutil) and, when the run
is cancelled or times out, or the command exits leaving processes behind, signals its
whole process group: SIGTERM, then SIGKILL after ``kill_grace`` seconds.

The process is reaped here, not by asyncio's child watcher: a pidfd (Linux) tells the loop
when it exits, else a thread waits for it. Child watchers that reap every child
(``waitpid(-1)``, the deprecated ``SafeChildWatcher``/``FastChildWatcher``) must not be in
use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import psutil

from runtrack._command_output import CommandOutput
from runtrack._context import current_run
from runtrack._exceptions import CommandFailed, CommandNotExecutable, CommandNotFound
from runtrack._logging import get_logger
from runtrack.registry.base import is_int

if TYPE_CHECKING:
    from runtrack._manager import BackgroundTaskManager
    from runtrack._models import Run

__all__ = ["CommandSpec", "prepare", "submit_command"]

#: Seconds to wait for the pipes to close once the process group is gone (a process that
#: left the group may still hold them).
_PIPE_GRACE: Final = 1.0
#: Seconds to wait, after SIGKILL, for the killed processes to be reaped.
_KILLED_WAIT: Final = 10.0
#: Seconds the output still gets to be written when the run is cancelled or times out.
_CANCEL_FLUSH: Final = 1.0
_SHELL: Final = "/bin/sh"


@dataclasses.dataclass(frozen=True, slots=True)
class CommandSpec:
    """What a command run executes (env values live here only, never in the registry)."""

    argv: tuple[str, ...]
    cwd: str | None
    env: dict[str, str] | None  # None: this process's environment as it is at start
    output_limit: int
    kill_grace: float


def prepare(
    argv: object,
    *,
    cwd: object,
    env: object,
    inherit_env: bool,
    shell: bool,
    output_limit: object,
    kill_grace: object,
) -> tuple[CommandSpec, dict[str, Any], str]:
    """Check the arguments of `run_command`: the spec, the run's parameters, its name.

    Raises:
        TypeError: argv, env or a limit of the wrong type.
        ValueError: an empty argv, a ``cwd`` that is not a directory, a negative limit.
    """
    if shell:
        if not isinstance(argv, str):
            raise TypeError(
                f"with shell=True, pass the command line as one str, got {type(argv).__name__}"
            )
        if not argv.strip():
            raise ValueError("the shell command line is empty")
        args: tuple[str, ...] = (argv,)
        command: tuple[str, ...] = (_SHELL, "-c", argv)
        name = "sh"
    else:
        if isinstance(argv, str | bytes):
            raise TypeError(
                f"argv must be a list of str such as ['ls', '-l'], got the string {argv!r}: "
                "pass a list, or shell=True to run a command line through the shell"
            )
        if not isinstance(argv, Sequence) or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a list or tuple of str, got {argv!r}")
        if not argv:
            raise ValueError("argv is empty: pass the program and its arguments")
        args = command = tuple(argv)
        name = os.path.basename(args[0]) or args[0]
    if any("\x00" in a for a in args):
        raise ValueError("argv holds a NUL character, which no program can receive")
    where: str | None = None
    if cwd is not None:
        if not isinstance(cwd, str | os.PathLike):
            raise TypeError(f"cwd must be a str or path, got {type(cwd).__name__}")
        where = os.fspath(cwd)
        if not isinstance(where, str) or not os.path.isdir(where):
            raise ValueError(f"cwd {cwd!r} is not an existing directory")
    env_names: list[str] = []
    full_env: dict[str, str] | None = None
    if env is not None or not inherit_env:
        if env is not None and not isinstance(env, Mapping):
            raise TypeError(f"env must be a mapping of str to str or None, got {env!r}")
        full_env = dict(os.environ) if inherit_env else {}
        for key, value in (env or {}).items():
            if not isinstance(key, str) or not key or "=" in key or "\x00" in key:
                raise ValueError(f"env name {key!r} is not a valid environment variable name")
            if value is None:
                full_env.pop(key, None)
            elif isinstance(value, str) and "\x00" not in value:
                full_env[key] = value
            else:
                raise TypeError(f"env[{key!r}] must be a str (without NUL) or None")
            env_names.append(key)
    if not is_int(output_limit) or output_limit < 0:  # type: ignore[operator]
        raise ValueError(f"output_limit must be an int >= 0 (bytes), got {output_limit!r}")
    if isinstance(kill_grace, bool) or not isinstance(kill_grace, int | float):
        raise TypeError(f"kill_grace must be a number of seconds, got {kill_grace!r}")
    if not 0 <= kill_grace < float("inf"):
        raise ValueError(f"kill_grace must be >= 0 seconds, got {kill_grace!r}")
    spec = CommandSpec(command, where, full_env, output_limit, float(kill_grace))  # type: ignore[arg-type]
    parameters: dict[str, Any] = {
        "argv": list(args),
        "cwd": where,
        "shell": shell,
        "env": sorted(env_names),  # names only: values may be secrets
        "inherit_env": inherit_env,
        "output_limit": output_limit,
    }
    return spec, parameters, name


async def submit_command(
    manager: BackgroundTaskManager,
    argv: object,
    *,
    cwd: object,
    env: object,
    inherit_env: bool,
    timeout: float | None,
    name: str | None,
    tags: Mapping[str, str] | None,
    group: str | None,
    priority: int,
    output_limit: object,
    kill_grace: object,
    shell: bool,
) -> Run:
    """`BackgroundTaskManager.run_command`: check the command, then submit it as a run."""
    spec, parameters, default_name = prepare(
        argv, cwd=cwd, env=env, inherit_env=inherit_env, shell=shell,
        output_limit=output_limit, kill_grace=kill_grace,
    )  # fmt: skip
    return await manager.submit(
        functools.partial(execute, spec),
        name=name or default_name, parameters=parameters, tags=tags, group=group,
        priority=priority, timeout=timeout,
    )  # fmt: skip


# -- executing ------------------------------------------------------------------------------


class _Pipe(asyncio.Protocol):
    """Feeds what one pipe delivers to the output; resolves ``closed`` at its end."""

    def __init__(self, output: CommandOutput, stream: str, closed: asyncio.Future[None]) -> None:
        self._output = output
        self._stream = stream
        self._closed = closed

    def data_received(self, data: bytes) -> None:
        self._output.feed(self._stream, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


class _Reaper:
    """Waits for the child with ``wait4`` (exit status and rusage) without blocking the loop."""

    def __init__(self, pid: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = pid
        self._loop = loop
        self.exited: asyncio.Future[tuple[int, Any]] = loop.create_future()
        self._pidfd = -1
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux, or an old kernel: a thread waits
            threading.Thread(target=self._wait_blocking, daemon=True).start()
        else:
            loop.add_reader(self._pidfd, self._check)
            self._check()  # it may have exited already

    def _check(self) -> None:
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: no status to report
            pid, status, usage = self.pid, 255 << 8, None
        if pid == 0:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self.exited.done():
            self.exited.set_result((status, usage))

    def _wait_blocking(self) -> None:
        try:
            _pid, status, usage = os.wait4(self.pid, 0)
        except ChildProcessError:
            status, usage = 255 << 8, None
        self._loop.call_soon_threadsafe(self._set, status, usage)

    def _set(self, status: int, usage: Any) -> None:
        if not self.exited.done():
            self.exited.set_result((status, usage))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its user (setuid): it cannot be signalled
        return False
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _group_gone(pgid: int, timeout: float) -> bool:
    """Wait until no process of the group exists (reaped, not zombies) or time runs out."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while _group_alive(pgid):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, 0.1)
    return True


async def stop_group(pgid: int, kill_grace: float) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``kill_grace`` seconds."""
    if not _group_alive(pgid):
        return
    _signal_group(pgid, signal.SIGTERM)
    _signal_group(pgid, signal.SIGCONT)  # a stopped process handles SIGTERM only once woken
    if await _group_gone(pgid, kill_grace):
        return
    _signal_group(pgid, signal.SIGKILL)
    if not await _group_gone(pgid, _KILLED_WAIT):
        get_logger().warning(
            "command_group_not_reaped", pgid=pgid,
            detail="processes of the command's group were killed but are not reaped yet "
            "(zombies): the system's init process reaps them",
        )  # fmt: skip


async def _sample_memory(pid: int, peak: list[int]) -> None:
    """Keep in ``peak[0]`` the most resident memory the process tree held at once.

    Sampled (at start, then at intervals growing from 0.1 to 1 second): the kernel's peak
    (``ru_maxrss``) counts the memory of this process, the child's parent, at fork.
    """
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    interval = 0.1
    try:  # at start: no descendants yet (and looking for them costs a scan of /proc)
        peak[0] = root.memory_info().rss
    except psutil.Error:
        return
    while True:
        await asyncio.sleep(interval)
        interval = min(interval * 2, 1.0)
        try:
            total = root.memory_info().rss
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        except psutil.Error:  # exited
            return
        peak[0] = max(peak[0], total)


def _spawn(spec: CommandSpec) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            spec.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=spec.cwd, env=spec.env, start_new_session=True,
        )  # fmt: skip
    except FileNotFoundError as exc:
        if spec.cwd is not None and not os.path.isdir(spec.cwd):
            raise ValueError(f"cwd {spec.cwd!r} no longer exists") from None
        raise CommandNotFound(spec.argv[0]) from exc
    except PermissionError as exc:
        raise CommandNotExecutable(spec.argv[0]) from exc
    except OSError as exc:
        if exc.errno == errno.ENOEXEC:  # not a program this system runs (no #! line, ...)
            raise CommandNotExecutable(spec.argv[0]) from exc
        raise


async def execute(spec: CommandSpec) -> dict[str, Any]:
    """The code of a command run: run the process, record its output, return its result.

    Raises:
        CommandFailed: the command exited with a nonzero code or was killed by a signal.
        CommandNotFound: the program does not exist.
        CommandNotExecutable: the program may not be executed.
    """
    handle = current_run()
    loop = asyncio.get_running_loop()
    output = CommandOutput(
        handle.manager.registry, handle.run_id, spec.output_limit,
        get_logger(run_id=handle.run_id),
    )  # fmt: skip
    process = _spawn(spec)
    pgid = process.pid  # start_new_session: the child leads its own group
    reaper = _Reaper(process.pid, loop)
    peak = [0]
    sampler = loop.create_task(_sample_memory(process.pid, peak))
    writer = loop.create_task(output.run())
    transports: list[asyncio.BaseTransport] = []
    closed: list[asyncio.Future[None]] = []
    try:
        try:
            for stream, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
                done: asyncio.Future[None] = loop.create_future()
                transport, _ = await loop.connect_read_pipe(
                    functools.partial(_Pipe, output, stream, done), pipe
                )
                transports.append(transport)
                closed.append(done)
            status, usage = await asyncio.shield(reaper.exited)  # cancelling leaves it
            sampler.cancel()
            await stop_group(pgid, spec.kill_grace)  # what it left running
            await asyncio.wait(closed, timeout=_PIPE_GRACE)
        except BaseException:
            # Cancelled, timed out, or shutting down: stop the group, even if cancelled again.
            stopping = loop.create_task(stop_group(pgid, spec.kill_grace))
            try:
                await asyncio.shield(stopping)
                await asyncio.wait(closed, timeout=_PIPE_GRACE)
            finally:
                _close(transports, output)
                await asyncio.wait([writer], timeout=_CANCEL_FLUSH)
                writer.cancel()
            raise
        _close(transports, output)
        try:
            await asyncio.shield(writer)  # the output is written before the run ends
        except BaseException:
            await asyncio.wait([writer], timeout=_CANCEL_FLUSH)
            writer.cancel()
            raise
    finally:
        sampler.cancel()
        for pipe in (process.stdout, process.stderr):  # not left open if never connected
            if pipe is not None:
                pipe.close()
        exited = reaper.exited
        if exited.done() and not exited.cancelled():  # reaped here: Popen must not wait
            process.returncode = os.waitstatus_to_exitcode(exited.result()[0])
    exit_code = os.waitstatus_to_exitcode(status)
    result = {
        "exit_code": exit_code,
        "cpu_seconds": 0.0 if usage is None else round(usage.ru_utime + usage.ru_stime, 6),
        "max_rss_bytes": peak[0],
        "output_truncated": output.truncated,
    }
    if exit_code != 0:
        raise CommandFailed(exit_code, output.last_stderr_line, result=result)
    return result


def _close(transports: list[asyncio.BaseTransport], output: CommandOutput) -> None:
    for transport in transports:
        transport.close()
    output.close()
