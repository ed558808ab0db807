"""The errors runtrack raises.

Every error is a subclass of `RuntrackError`, so one ``except`` catches them all::

    RuntrackError
    ├── DuplicateRunError          a run id that already exists (registry) or is active (manager)
    ├── RunNotFoundError           no run with that id
    ├── QueueFullError             more runs waiting for admission than ``max_pending``
    ├── ManagerClosedError         the manager is shutting down or closed
    ├── NoActiveRunError           ``current_run()`` called outside a run
    ├── RegistryUnavailableError   the registry cannot be reached
    ├── RegistryConfigError        the registry refuses the configuration (credentials,
    │                              database, path): fix it, retrying will not help
    ├── CommandFailed              a command run exited with a nonzero code or a signal
    ├── CommandNotFound            a command run's program does not exist
    └── CommandNotExecutable       a command run's program may not be executed

Bad arguments are `TypeError` or `ValueError`, and bad run data is pydantic's
``ValidationError``, as usual in Python. A value the registry's store refuses to hold (a
NUL character on PostgreSQL, a lone surrogate, JSON nested too deep for MariaDB, ...) is a
`ValueError` that names the run and the field.
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = [
    "CommandFailed",
    "CommandNotExecutable",
    "CommandNotFound",
    "DuplicateRunError",
    "ManagerClosedError",
    "NoActiveRunError",
    "QueueFullError",
    "RegistryConfigError",
    "RegistryUnavailableError",
    "RunNotFoundError",
    "RuntrackError",
]


class RuntrackError(Exception):
    """Base class of every error runtrack raises."""

    _init_args: tuple[object, ...] = ()
    _init_kwargs: dict[str, object] = {}  # noqa: RUF012 - replaced per instance, never mutated

    def __reduce__(self) -> str | tuple[Any, ...]:
        # The leaves build their message from their own arguments: rebuild them from those,
        # so an error survives pickling (process pools, queues) unchanged.
        if type(self).__init__ is RuntrackError.__init__:
            return super().__reduce__()
        return (_rebuild, (type(self), self._init_args, self._init_kwargs))


def _rebuild(
    cls: type[RuntrackError], args: tuple[object, ...], kwargs: dict[str, object]
) -> RuntrackError:
    return cls(*args, **kwargs)


class DuplicateRunError(RuntrackError):
    """A run with this id already exists in the registry, or is active in the manager."""

    def __init__(self, run_id: str, *, where: str = "registry") -> None:
        self._init_args, self._init_kwargs = (run_id,), {"where": where}
        self.run_id = run_id
        super().__init__(
            f"run {run_id!r} already exists in the {where}: "
            "pass a fresh run_id, or leave it out to get a new UUID"
        )


class RunNotFoundError(RuntrackError):
    """No run with this id exists."""

    def __init__(self, run_id: str) -> None:
        self._init_args = (run_id,)
        self.run_id = run_id
        super().__init__(
            f"no run {run_id!r} in the registry: check the id, or whether it was cleaned up"
        )


class QueueFullError(RuntrackError):
    """More runs would wait for admission than ``max_pending`` allows."""

    def __init__(self, max_pending: int) -> None:
        self._init_args = (max_pending,)
        self.max_pending = max_pending
        super().__init__(
            f"{max_pending} runs are already waiting for admission (max_pending={max_pending}): "
            "retry later, or raise max_pending or max_concurrency"
        )


class ManagerClosedError(RuntrackError):
    """The manager no longer accepts runs because its shutdown has begun."""

    def __init__(self, state: str) -> None:
        self._init_args = (state,)
        self.state = state
        super().__init__(
            f"the BackgroundTaskManager is {state} and accepts no new runs: "
            "submit runs before shutdown(), or create a new manager"
        )


class NoActiveRunError(RuntrackError):
    """``current_run()`` or ``report_progress()`` was called outside a run."""

    def __init__(self) -> None:
        super().__init__(
            "no run is executing in this context: current_run() and report_progress() "
            "work only inside code started by a BackgroundTaskManager"
        )


class RegistryUnavailableError(RuntrackError):
    """The registry could not be reached in time."""

    def __init__(self, backend: str, detail: str = "") -> None:
        self._init_args = (backend, detail)
        self.backend = backend
        suffix = f" ({detail})" if detail else ""
        super().__init__(
            f"the {backend} registry is unavailable{suffix}: check that the server is "
            "running and reachable, then retry"
        )


class RegistryConfigError(RuntrackError):
    """The registry's store refuses how it is configured: retrying will not help.

    A wrong password, a user, role or database that does not exist, a SQLite file in a
    folder that does not exist, a Redis database number out of range, ...
    """

    def __init__(self, backend: str, problem: str, fix: str) -> None:
        self._init_args = (backend, problem, fix)
        self.backend = backend
        self.problem = problem
        self.fix = fix
        said = problem.rstrip(" .")
        super().__init__(f"the {backend} registry cannot be used as configured: {said}: {fix}")


class CommandFailed(RuntrackError):
    """A command run by `BackgroundTaskManager.run_command` exited with a nonzero code.

    Recorded as the run's failure (``error_type="CommandFailed"``); the message holds the
    exit code (or the signal that killed the process) and the last line it wrote to stderr.

    Attributes:
        exit_code: The exit code; ``-N`` when signal N killed the process.
        last_stderr_line: The last non-blank line the command wrote to stderr ('' if none).
        result: What is recorded as the failed run's ``result``: exit code, CPU seconds,
            max RSS and whether output was dropped, as for a command that succeeded.
    """

    def __init__(
        self, exit_code: int, last_stderr_line: str = "", *, result: dict[str, Any] | None = None
    ) -> None:
        self._init_args = (exit_code, last_stderr_line)
        self._init_kwargs = {"result": result}
        self.exit_code = exit_code
        self.last_stderr_line = last_stderr_line
        self.result = result
        if exit_code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-exit_code).name}"
            except ValueError:
                how = f"was killed by signal {-exit_code}"
            how += f" (exit code {exit_code})"
        else:
            how = f"exited with code {exit_code}"
        tail = f": {last_stderr_line}" if last_stderr_line else " (no stderr output)"
        super().__init__(f"the command {how}{tail}")


class CommandNotFound(RuntrackError):
    """The program of a command run does not exist (or is not on ``PATH``)."""

    def __init__(self, program: str) -> None:
        self._init_args = (program,)
        self.program = program
        super().__init__(
            f"command not found: {program!r}: check the spelling, give its full path, or "
            "set PATH in env="
        )


class CommandNotExecutable(RuntrackError):
    """The program of a command run exists but cannot be executed (permissions, format)."""

    def __init__(self, program: str) -> None:
        self._init_args = (program,)
        self.program = program
        super().__init__(
            f"command not executable: {program!r}: check that it may be executed (chmod +x) "
            "and that a script starts with a #! line, or run it through its interpreter"
        )
