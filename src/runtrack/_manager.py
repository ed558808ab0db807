"""`BackgroundTaskManager`: starts runs, admits them under limits, and records what happens."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, Self

from runtrack._admission import Job
from runtrack._background import (
    BackgroundFunction,
    P,
    RunOptions,
    decorator,
)
from runtrack._cancelling import Cancelling
from runtrack._execution import Execution
from runtrack._idempotent import submit_once
from runtrack._lifecycle import Lifecycle
from runtrack._listeners import Listener
from runtrack._models import Retry, Run
from runtrack._options import UNBOUNDED, Options
from runtrack._queueing import Queueing
from runtrack._requeue import requeue_run
from runtrack._stats import ManagerStats
from runtrack._storable import MAX_PROGRESS_MESSAGE, storable_text
from runtrack._submission import check_limit, default_owner
from runtrack._tasks import R, TaskFunction, task_decorator
from runtrack._wiring import assemble
from runtrack.registry._idempotency import DEFAULT_IDEMPOTENCY_TTL
from runtrack.registry.base import RunRegistry
from runtrack.registry.memory import InMemoryRunRegistry

__all__ = ["BackgroundTaskManager", "Listener"]


class BackgroundTaskManager(Lifecycle, Queueing, Cancelling, Execution):
    """Starts background runs, admits them under limits, and records every status change.

    Runs wait in a priority queue (higher ``priority`` first, FIFO within one) and are
    admitted into at most ``max_concurrency`` executors; ``group_limits`` caps runs per
    group. A waiting run costs no Task and no semaphore. Every status change is written to
    the registry, which every replica, CLI and dashboard can read.

    Args:
        registry: Where runs are recorded; None means a fresh `InMemoryRunRegistry`.
        max_concurrency: Most runs executing at once; None is unbounded.
        max_pending: Most runs waiting for admission; more raise `QueueFullError`.
        group_limits: Most runs executing at once per group, e.g. ``{"exports": 2}``.
        default_timeout: Seconds a run may take when it sets no ``timeout``.
        shutdown_grace: Seconds `shutdown` waits for runs before cancelling them.
        owner: This manager's name in the registry (default ``host:pid:random``).
        heartbeat_interval: Seconds between heartbeats: one write of this manager's row
            (see `ManagerInfo`), or of every running run on a registry without one.
        poll_interval: Seconds between looks for runs of this manager that another
            process cancelled (their coroutines are then stopped here).
        lease: Seconds without a heartbeat after which a RUNNING run of another manager
            sharing the registry counts as interrupted (its manager crashed) and is
            recorded FAILED with ``error_type="RunInterrupted"`` (the runs that manager had
            queued, CANCELLED); looked for three times per lease. Default: 6 heartbeat
            intervals. Must exceed ``heartbeat_interval``.
        cancel_timeout: Seconds to wait for a cancelled run's code to stop before it is
            reported as ignoring cancellation.
        registry_timeout: Seconds a caller waits for the registry while it is unreachable:
            `submit` for its QUEUED record, `cancel_task`, `wait` and `wait_all` for the
            writes they promise, before raising `RegistryUnavailableError`; and, at
            `shutdown`, how long unwritten records get after the runs were stopped (what
            is still unwritten then is logged as ``registry_writes_lost``). Default 10.
        max_threads: Most runs of plain (sync) functions executing at once, each in a
            worker thread (they also count against ``max_concurrency`` and group limits).
        max_payload_bytes: Largest JSON size of a run's parameters (larger ones are a
            `ValueError` at submission) and of its result (a larger one is recorded as
            None, with a warning); None for no limit.
        idempotency_ttl: How long a finished run keeps its ``idempotency_key``: a
            `submit` with that key meanwhile returns it instead of starting another run.

    Example:
        >>> import asyncio
        >>> from runtrack import BackgroundTaskManager, Run
        >>> async def greet(who: str) -> str:
        ...     return f"hello {who}"
        >>> async def main() -> object:
        ...     async with BackgroundTaskManager(max_concurrency=10) as manager:
        ...         run_id = manager.start_task(Run(name="greet"), greet("ada"))
        ...         return (await manager.wait(run_id)).result
        >>> asyncio.run(main())
        'hello ada'
    """

    def __init__(
        self,
        registry: RunRegistry | None = None,
        *,
        max_concurrency: int | None = None,
        max_pending: int | None = None,
        group_limits: Mapping[str, int] | None = None,
        default_timeout: float | None = None,
        shutdown_grace: float = 30.0,
        owner: str | None = None,
        heartbeat_interval: float = 10.0,
        poll_interval: float = 1.0,
        lease: float | None = None,
        cancel_timeout: float = 5.0,
        registry_timeout: float = 10.0,
        max_payload_bytes: int | None = 1_000_000,
        max_threads: int = 40,
        idempotency_ttl: timedelta = DEFAULT_IDEMPOTENCY_TTL,
    ) -> None:
        options = Options.check(
            max_concurrency=max_concurrency, max_pending=max_pending, group_limits=group_limits,
            default_timeout=default_timeout, shutdown_grace=shutdown_grace,
            heartbeat_interval=heartbeat_interval, lease=lease, cancel_timeout=cancel_timeout,
            registry_timeout=registry_timeout, max_payload_bytes=max_payload_bytes,
            max_threads=max_threads, poll_interval=poll_interval, idempotency_ttl=idempotency_ttl,
        )  # fmt: skip
        if registry is None:
            registry = InMemoryRunRegistry()
        elif not isinstance(registry, RunRegistry):
            raise TypeError(
                f"registry must implement runtrack.RunRegistry, got {type(registry).__name__}"
            )
        self.registry: RunRegistry = registry
        self.owner: str = owner or default_owner()
        assemble(self, registry, self.owner, options)

    def __repr__(self) -> str:
        return (
            f"<BackgroundTaskManager {self._state.value} active={len(self._jobs)} "
            f"queued={self._waiting + self._delayed}>"
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting runs, wait up to ``grace`` seconds, then cancel what is left.

        Afterwards no run of this manager is QUEUED or RUNNING in the registry and every
        write has been flushed. Calling it again waits for the first call to finish.

        It returns within ``grace + cancel_timeout + registry_timeout`` seconds even while the
        registry is unreachable: the records that could not be written by then are logged
        once (``registry_writes_lost``, every run id with the status it ended with).

        Args:
            grace: Seconds to let queued and running runs finish; default ``shutdown_grace``.
        """
        await self._shutdown(grace)

    async def aclose(self) -> None:
        """Alias of `shutdown` with the default grace."""
        await self.shutdown()

    # -- submitting -------------------------------------------------------------------------

    def start_task(self, run: Run, coro: Awaitable[Any]) -> str:
        """Start ``coro`` as the run ``run`` and return its id at once.

        The run is recorded QUEUED (unless the registry already has it), waits for
        admission, and its outcome is recorded when it ends. Exceptions inside ``coro`` are
        recorded, never raised here. If the call raises, ``coro`` is closed.

        Raises:
            TypeError: ``run`` is not a `Run`, or ``coro`` is not awaitable.
            DuplicateRunError: a run with this id is active in this manager.
            QueueFullError: ``max_pending`` runs are already waiting.
            ManagerClosedError: shutdown has begun.
        """
        return self._start_task(run, coro)

    async def submit(
        self,
        fn_or_coro: Callable[..., Any] | Awaitable[Any],
        *args: Any,
        name: str | None = None,
        run_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        group: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        retry: Retry | None = None,
        delay: float | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> Run:
        """Record a run QUEUED, then start it; returns the recorded `Run`.

        Unlike `start_task`, the QUEUED record is written before this returns, so any
        reader of the registry, in any process, sees it.

        Args:
            fn_or_coro: An async function (called with ``*args, **kwargs`` when admitted)
                or a coroutine.
            name: The kind of work; default the function's qualified name.
            run_id: The id; default a fresh UUID4.
            parameters: JSON describing the work (shown in dashboards).
            tags: String labels to filter runs by.
            group: Concurrency group (see ``group_limits``).
            priority: Higher is admitted first.
            timeout: Seconds before the run fails with ``TimeoutError``.
            retry: Re-run failures (needs an async function, not a coroutine).
            delay: Seconds to wait before the run may be admitted.
            idempotency_key: While a run with this key is queued or running, or finished
                less than ``idempotency_ttl`` ago (in any manager sharing the registry),
                return that run instead, and start nothing (a coroutine given is closed).
            *args: Positional arguments for ``fn_or_coro``.
            **kwargs: Keyword arguments for ``fn_or_coro``. A keyword that is both a run
                option above and a parameter of ``fn_or_coro`` is a `TypeError`: bind the
                function's argument with `functools.partial` (every keyword given with a
                partial is a run option).

        Raises:
            TypeError: not an async function or awaitable; arguments or retry with a
                coroutine; a run option that is also a parameter of the function; an
                ``idempotency_key`` that is not a str.
            ValueError: an ``idempotency_key`` that is empty or over 255 characters.
            pydantic.ValidationError: non-JSON parameters, bad tags, bad timeout, ...
            DuplicateRunError: the id exists in the registry or is active here.
            QueueFullError: ``max_pending`` runs are already waiting.
            ManagerClosedError: shutdown has begun.

        Example:
            >>> import asyncio
            >>> from runtrack import BackgroundTaskManager, Retry
            >>> async def resize(image: str, width: int) -> int:
            ...     return width
            >>> async def main() -> str:
            ...     async with BackgroundTaskManager() as manager:
            ...         run = await manager.submit(
            ...             resize, "cat.png", width=64, retry=Retry(attempts=3), tags={"k": "v"}
            ...         )
            ...         return (await manager.wait(run.run_id)).status.value
            >>> asyncio.run(main())
            'completed'
        """
        run, job, loop = self._job_for(
            fn_or_coro, args, kwargs, name=name, run_id=run_id, parameters=parameters,
            tags=tags, group=group, priority=priority, timeout=timeout, retry=retry, delay=delay,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        if idempotency_key is not None:
            return await submit_once(self, run, job, loop, delay, idempotency_key)
        return await self._submit_job(run, job, loop, delay)

    def start_call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        run_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        group: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        retry: Retry | None = None,
        delay: float | None = None,
        **kwargs: Any,
    ) -> str:
        """Start ``fn(*args, **kwargs)`` as a run and return its id at once.

        The synchronous sibling of `submit`, as `start_task` is for a ready coroutine: the
        QUEUED record is written in the background (so the work runs, tracked here, even
        while the registry is unreachable). Takes the same options as `submit`.

        Raises:
            TypeError: ``fn`` is not an async function.
            pydantic.ValidationError: non-JSON parameters, bad tags, bad timeout, ...
            DuplicateRunError: the id is active here.
            QueueFullError: ``max_pending`` runs are already waiting.
            ManagerClosedError: shutdown has begun.
        """
        _run, job, loop = self._job_for(
            fn, args, kwargs, name=name, run_id=run_id, parameters=parameters, tags=tags,
            group=group, priority=priority, timeout=timeout, retry=retry, delay=delay,
        )  # fmt: skip
        return self._start_job(job, loop, delay, chosen_id=run_id is not None)

    def background(
        self,
        *,
        name: str | None = None,
        timeout: float | None = None,
        group: str | None = None,
        priority: int = 0,
        retry: Retry | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Callable[[Callable[P, Any]], BackgroundFunction[P]]:
        """Decorate an async function so that calling it starts a run and returns its id.

        Example:
            >>> import asyncio
            >>> from runtrack import BackgroundTaskManager
            >>> manager = BackgroundTaskManager()
            >>> @manager.background(timeout=60)
            ... async def send_email(to: str) -> str:
            ...     return f"sent to {to}"
            >>> async def main() -> object:
            ...     async with manager:
            ...         run_id = send_email("ada@example.com")  # returns at once
            ...         return (await manager.wait(run_id)).result
            >>> asyncio.run(main())
            'sent to ada@example.com'
        """
        options = RunOptions(
            name=name, timeout=timeout, group=group, priority=priority, retry=retry,
            tags=dict(tags or {}),
        )  # fmt: skip
        return decorator(lambda: self, options)

    def task(
        self,
        name: str | None = None,
        *,
        retry: Retry | None = None,
        timeout: float | None = None,
        group: str | None = None,
        priority: int = 0,
        requeue_on_interrupt: bool = False,
        run_here: bool = True,
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]:
        """Register an async or sync function as a durable task, under ``name``.

        ``await fn.submit(*args, **kwargs)`` then records a QUEUED run with JSON
        arguments that any manager sharing the registry and registering the same name may
        claim and run (exactly one does); calling ``fn(...)`` still runs the function. A
        run of a manager that crashed is claimed by another if it was QUEUED, and re-run
        only with ``requeue_on_interrupt=True`` if it was RUNNING. See "Durable tasks".

        Args:
            name: The task name (default the function's qualified name): the same in
                every replica.
            retry: Re-run failures (needs the function, called again).
            timeout: Seconds each run may take (a submit may override it).
            group: Concurrency group of its runs (a submit may override it).
            priority: Priority of its runs (a submit may override it).
            requeue_on_interrupt: Re-queue a run whose manager died while running it.
            run_here: False: this manager only submits runs of the task (a web process
                whose workers run them) and never claims them.

        Example:
            >>> import asyncio
            >>> from runtrack import BackgroundTaskManager
            >>> manager = BackgroundTaskManager()
            >>> @manager.task(name="resize")
            ... async def resize(path: str, width: int) -> int:
            ...     return width
            >>> async def main() -> object:
            ...     async with manager:
            ...         run = await resize.submit("cat.png", width=64)
            ...         return (await manager.wait(run.run_id)).result
            >>> asyncio.run(main())
            64
        """
        return task_decorator(
            lambda: self, self._claims.add if run_here else lambda _spec: None, name=name,
            retry=retry, timeout=timeout, group=group, priority=priority,
            requeue_on_interrupt=requeue_on_interrupt,
        )  # fmt: skip

    # -- cancelling and waiting ---------------------------------------------------------------

    async def cancel_task(self, run_id: str) -> bool:
        """Cancel a queued or running run, here or in another manager sharing the registry.

        A queued run is removed without taking a concurrency slot; a running run's code gets
        `asyncio.CancelledError`. The run is recorded CANCELLED before this returns.

        Returns:
            True if the run was queued or running and is now CANCELLED; False if it is
            unknown or already finished.
        """
        return await self._cancel(run_id)

    async def wait(self, run_id: str, timeout: float | None = None) -> Run:
        """Wait for a run to finish and return its terminal record.

        Works for runs of other managers too (by polling the registry).

        Raises:
            RunNotFoundError: the registry has no such run.
            TimeoutError: it did not finish within ``timeout`` seconds.
            RegistryUnavailableError: the run ended here, but its record could not be
                written within ``registry_timeout`` seconds (it is still retried).
        """
        async with asyncio.timeout(timeout):
            return await self._wait(run_id)

    async def wait_all(self, timeout: float | None = None) -> None:
        """Wait until nothing is queued or running in this manager; writes are flushed.

        Raises:
            TimeoutError: runs were still active after ``timeout`` seconds (none is cancelled).
            RegistryUnavailableError: the runs have ended, but their records could not be
                written within ``registry_timeout`` seconds (they are still retried).
        """
        async with asyncio.timeout(timeout):
            await self._idle.wait()
            await self._bounded(self._writer.flush(), "the runs have ended here")

    # -- progress, heartbeats, listeners --------------------------------------------------------

    async def _record_progress(self, job: Job, fraction: float, message: str | None) -> None:
        if message is not None:
            message = storable_text(message, MAX_PROGRESS_MESSAGE)
        self._writer.update(job.run_id, {"progress": fraction, "progress_message": message})

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(event)`` with a `RunEvent` on every status change of this manager.

        A callback may be sync or async; its exceptions are logged, never raised.
        """
        self._events.add(callback)

    def remove_listener(self, callback: Listener) -> None:
        """Stop calling ``callback``."""
        self._events.remove(callback)

    # -- introspection --------------------------------------------------------------------------

    def get_active_task_count(self) -> int:
        """How many runs are queued or running in this manager."""
        return len(self._jobs)

    def get_active_task_ids(self) -> list[str]:
        """Ids of the runs queued or running in this manager."""
        return list(self._jobs)

    def is_task_active(self, run_id: str) -> bool:
        """Whether the run is queued or running in this manager."""
        return run_id in self._jobs

    @property
    def max_concurrency(self) -> int | None:
        """The current limit on runs executing at once (None: unbounded)."""
        return self._max_concurrency

    def set_max_concurrency(self, limit: int | None) -> None:
        """Change the concurrency limit while running.

        Raising it admits waiting runs at once; lowering it lets running runs finish and
        admits no more until the count is under the new limit.
        """
        check_limit("max_concurrency", limit)
        self._max_concurrency = limit
        self._limit = limit or UNBOUNDED
        self._wake_pump()

    def stats(self) -> ManagerStats:
        """A snapshot of counts, limits and per-name outcomes.

        Its ``queue_depth`` is the figure last read by `queue_depth`, which the manager
        also does once per ``heartbeat_interval``.
        """
        return self._snapshot()

    async def queue_depth(self) -> dict[int, int]:
        """QUEUED runs in the registry (of every manager sharing it) by priority.

        One grouped query on SQL, one hash read on Redis.

        Raises:
            RegistryUnavailableError: the registry could not be reached.
        """
        return await self._depth.read()

    async def requeue(self, run_id: str, delay: float | timedelta | None = None) -> Run:
        """Queue a new run of a finished durable run's task, with the same arguments.

        The new run (``requeued_from=run_id``, same parameters, tags, group, priority,
        timeout and retries) has no owner: any manager that registered the task claims
        it, told at once where the registry pushes new work (PostgreSQL, Redis). Meant
        for dead letters (``list_runs(dead=True)``), once their cause is fixed.

        Args:
            run_id: A finished run of a ``@manager.task`` function.
            delay: Seconds (or a `timedelta`) before the new run may start: recorded at
                once with ``not_before`` set, which the registry keeps, so the requeue
                outlives this manager.

        Returns:
            The new run, as recorded.

        Raises:
            RunNotFoundError: no such run.
            ValueError: the run is still queued or running, or not a run of a durable
                task (a local run's code lives only in its manager: submit it again); a
                negative or NaN delay.
            TypeError: a delay that is neither a number nor a `timedelta`.
        """
        claims = self._claims
        return await requeue_run(
            self.registry, run_id, delay, wake_at=claims.wake_at, announce=claims.announce
        )

    async def run_command(
        self,
        argv: list[str] | tuple[str, ...] | str,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str | None] | None = None,
        inherit_env: bool = True,
        timeout: float | None = None,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        group: str | None = None,
        priority: int = 0,
        output_limit: int = 1_000_000,
        kill_grace: float = 5.0,
        shell: bool = False,
    ) -> Run:
        r"""Run a program as a tracked run; returns the recorded `Run` (as `submit` does).

        The QUEUED record is written before this returns; the command then waits for
        admission like any run, and `cancel_task`, ``timeout`` and `shutdown` stop its whole
        process group (SIGTERM, then SIGKILL after ``kill_grace`` seconds). stdout and stderr
        are recorded while it runs as `OutputChunk` s (one sequence across both streams,
        UTF-8 with invalid bytes replaced), the newest ``output_limit`` bytes kept. The
        ``result`` is ``{"exit_code", "cpu_seconds", "max_rss_bytes", "output_truncated"}``;
        a nonzero exit fails the run with `CommandFailed` (its ``result`` recorded too), a
        missing program with `CommandNotFound`, one that may not be executed with
        `CommandNotExecutable`. The docs page "Running commands" has the details.

        Args:
            argv: The program and its arguments, e.g. ``["pg_dump", "-Fc", "db"]``; with
                ``shell=True``, one command line (a str).
            cwd: Directory to run in; default this process's. stdin is ``/dev/null``.
            env: Variables set over the environment (a value of None removes the
                variable). Only their names are recorded, never their values.
            inherit_env: Start from this process's environment (default) or from nothing.
            timeout: Seconds before the command is stopped and the run fails.
            name: The kind of work; default the program's file name (``"sh"`` for a shell).
            tags: String labels to filter runs by.
            group: Concurrency group (see ``group_limits``).
            priority: Higher is admitted first.
            output_limit: Most bytes of output kept (the newest); when output was dropped,
                ``result["output_truncated"]`` is True.
            kill_grace: Seconds between SIGTERM and SIGKILL.
            shell: Run ``argv`` through ``/bin/sh -c``. Dangerous with untrusted input: a
                value holding ``;``, ``$(...)`` or quotes runs commands of its own. Prefer a
                list of arguments.

        Raises:
            TypeError: ``argv`` is a str without ``shell=True``, or not a list of str;
                ``env`` is not a mapping of str to str or None.
            ValueError: ``argv`` is empty, ``cwd`` is not an existing directory, or a limit
                is negative.
            QueueFullError: ``max_pending`` runs are already waiting.
            ManagerClosedError: shutdown has begun.

        Example:
            >>> import asyncio, sys
            >>> from runtrack import BackgroundTaskManager
            >>> async def main() -> object:
            ...     async with BackgroundTaskManager() as manager:
            ...         run = await manager.run_command([sys.executable, "-c", "print('hi')"])
            ...         done = await manager.wait(run.run_id)
            ...         output = await manager.registry.get_output(run.run_id)
            ...         return done.result["exit_code"], [c.text.strip() for c in output]
            >>> asyncio.run(main())
            (0, ['hi'])
        """
        from runtrack._commands import submit_command  # noqa: PLC0415 - kept off the import path

        return await submit_command(
            self, argv, cwd=cwd, env=env, inherit_env=inherit_env, timeout=timeout, name=name,
            tags=tags, group=group, priority=priority, output_limit=output_limit,
            kill_grace=kill_grace, shell=shell,
        )  # fmt: skip
