"""The claim loop: a manager takes durable runs from its registry and runs them.

While the manager has room and durable tasks registered, `ClaimLoop` claims a batch of
unclaimed QUEUED runs of those tasks (`TaskClaiming.claim_runs`, one statement or script)
and hands each to the normal execution path: the lanes, the executors, the writer's
group-committed status writes, retries, timeouts, cancellation.

The room: with ``max_concurrency``, its free slots plus a prefetch of claimed runs that
wait for a slot, so slots do not idle while the next claim is on its way. The prefetch
holds what the manager is expected to finish within `PREFETCH_HORIZON` seconds (from the
mean duration of its recent runs: up to ``max_concurrency`` runs of quick tasks, none of
slow ones, which another replica should take instead). A claim takes at most half of that
room, so the next claim is on its way while the runs of the last one execute. Unbounded, a
batch of claimed runs waiting: `BATCH`, doubled up to `MAX_BATCH` while there is a backlog.
A bounded manager claims again once a quarter of its room is free, or at once when no
claimed run waits.

It claims again when a local run ends (a slot freed), when `wake` is called (a durable
run submitted in this process, or a new-work notification pushed by the registry), at the
``not_before`` of a run delayed in this process (`wake_at`), else every ``poll_interval``.
At shutdown it stops claiming first, and gives back the runs it claimed but did not
start: they become unclaimed QUEUED runs for another manager.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from runtrack._admission import QUEUED, Job
from runtrack._clock import dt_to_us
from runtrack._models import Retry, Run
from runtrack._state import State
from runtrack._submission import is_async_callable
from runtrack._uncut import uncut
from runtrack._wakeups import Wakeups
from runtrack.registry._claiming import TaskClaiming

if TYPE_CHECKING:
    from runtrack._state import ManagerCore

__all__ = ["BATCH", "MAX_BATCH", "PREFETCH_HORIZON", "ClaimLoop", "TaskSpec"]

#: Runs claimed at once at first, and how many claimed runs may wait when unbounded;
#: doubled while claims come back full (a backlog), up to `MAX_BATCH`.
BATCH: Final = 100
MAX_BATCH: Final = 1000
#: Seconds of work a bounded manager may hold claimed ahead of its free slots.
PREFETCH_HORIZON: Final = 0.05
#: Seconds between claims while the registry fails (doubling up to poll_interval).
_RETRY_FIRST: Final = 0.05
#: Weight of the newest run in the mean duration that sizes the prefetch.
_EWMA: Final = 0.2


@dataclasses.dataclass(frozen=True, slots=True)
class TaskSpec:
    """A function registered as a durable task, and its run options."""

    name: str
    fn: Callable[..., Any]
    retry: Retry | None = None
    timeout: float | None = None
    group: str | None = None
    priority: int = 0
    requeue_on_interrupt: bool = False

    def conflicts_with(self, other: TaskSpec) -> bool:
        """Whether ``other`` registers another function under the same name.

        The same function defined again (a module reloaded) counts as the same.
        """

        def ident(fn: Callable[..., Any]) -> tuple[object, object]:
            return getattr(fn, "__module__", None), getattr(fn, "__qualname__", fn)

        return other.fn is not self.fn and ident(other.fn) != ident(self.fn)


class ClaimLoop:
    """Claims durable runs for one manager and runs them (see the module docstring).

    Attributes:
        announce: Called with the task names after this process recorded new durable
            runs (`TaskFunction.submit`), to tell other managers (a NOTIFY, a publish);
            None: they learn of them by polling.
    """

    announce: Callable[[Collection[str]], Awaitable[None]] | None = None

    def __init__(
        self,
        manager: ManagerCore,
        *,
        poll_interval: float,
        extra: Callable[[], Mapping[str, TaskSpec]] = dict,
    ) -> None:
        self._manager = manager
        self._poll_interval = poll_interval
        self._extra = extra
        self._tasks: dict[str, TaskSpec] = {}
        self._woken = asyncio.Event()
        self._wakeups = Wakeups(self.wake)
        self._claimed: set[Job] = set()  # claimed jobs, until they start or are given back
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._batch = BATCH
        self._backlog = True
        self._mean_duration: float | None = None  # of the runs ended here; None: none yet
        #: Whether the loop has task names to claim: a run that ends then wakes it.
        self.active = False

    # -- registration ---------------------------------------------------------------

    def add(self, spec: TaskSpec) -> None:
        """Register ``spec`` under its name (again for the same function).

        Raises:
            ValueError: another function is registered under this name.
        """
        known = self._tasks.get(spec.name)
        if known is not None and known.conflicts_with(spec):
            raise ValueError(
                f"a different function is already registered as the durable task "
                f"{spec.name!r}: give one of them another name (@task(name=...))"
            )
        self._tasks[spec.name] = spec
        self.wake()

    def specs(self) -> dict[str, TaskSpec]:
        """Every task this manager runs: its own, and those of the default manager's."""
        return {**self._extra(), **self._tasks}

    # -- waking -------------------------------------------------------------------------

    def wake(self) -> None:
        """Claim now (new work was announced, or submitted in this process).

        Safe to call from any thread (a notification listener's, say).
        """
        loop = self._manager._loop
        if loop is not None and not loop.is_closed():
            try:
                current = asyncio.get_running_loop()
            except RuntimeError:
                current = None
            if current is not loop:
                loop.call_soon_threadsafe(self._woken.set)
                return
        self._woken.set()

    def wake_at(self, when: datetime) -> None:
        """Claim at ``when``: the ``not_before`` of a run recorded in this process."""
        self._wakeups.at(self._manager._loop, when)

    def freed(self) -> None:
        """A local run ended: its slot may take a claimed run, if work is waiting.

        Only while the last claim found a backlog (it came back full, or there was no
        room to claim): otherwise new work comes with `wake` or the next poll, and a busy
        manager does not query the registry after every run.
        """
        if self._backlog:
            self._woken.set()

    def ran(self, duration: float) -> None:
        """A local run's code ended after ``duration`` seconds (sizes the prefetch)."""
        mean = self._mean_duration
        self._mean_duration = duration if mean is None else mean + _EWMA * (duration - mean)

    # -- the loop -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop as one of the manager's background tasks."""
        manager = self._manager
        self._task = manager._loop.create_task(self._run()) if manager._loop else None
        if self._task is not None:
            manager._background.add(self._task)
            self._task.add_done_callback(manager._background.discard)

    def _free(self) -> int:
        """How many runs to claim now (0: not yet)."""
        manager = self._manager
        waiting = 0
        for job in list(self._claimed):
            if job.claimed and job.state == QUEUED:
                waiting += 1
            else:
                self._claimed.discard(job)
        if manager._max_concurrency is None:
            return self._batch - waiting
        limit = manager._limit
        window = limit + self._prefetch(limit)
        # At most half the window per claim: the next claim is on its way while the runs
        # of the last one execute, rather than after all of them ended.
        room = min(window - len(manager._jobs), MAX_BATCH, max(1, window // 2))
        if waiting and room < window // 4:
            return 0  # claimed runs still wait for slots: claim more at once, later
        return room

    def _prefetch(self, limit: int) -> int:
        """Claimed runs to hold beyond the free slots (see the module docstring)."""
        mean = self._mean_duration
        if mean is None:
            return 0
        if mean <= 0:
            return MAX_BATCH
        return min(MAX_BATCH, int(limit * PREFETCH_HORIZON / mean))

    async def _run(self) -> None:
        manager = self._manager
        registry = manager.registry
        retry = _RETRY_FIRST
        while not self._stopping and manager._state is State.RUNNING:
            self._woken.clear()
            specs = self.specs()
            self.active = bool(specs)
            free = self._free()
            wait = self._poll_interval
            self._backlog = free <= 0
            if specs and free > 0 and isinstance(registry, TaskClaiming):
                try:
                    claimed = await uncut(registry.claim_runs(manager.owner, list(specs), free))
                except Exception as exc:  # the registry may be away: claim again later
                    manager._log.warning(
                        "claim_failed", error=f"{type(exc).__name__}: {exc}", retry_in=retry
                    )
                    wait, retry = retry, min(retry * 2, self._poll_interval)
                else:
                    retry = _RETRY_FIRST
                    for run in claimed:
                        self._adopt(run, specs)
                    full = len(claimed) == free
                    self._backlog = full
                    self._batch = min(self._batch * 2, MAX_BATCH) if full else BATCH
                    if full:
                        await asyncio.sleep(0)  # let the claimed runs start, then claim more
                        continue
            try:
                async with asyncio.timeout(wait):
                    await self._woken.wait()
            except TimeoutError:
                pass

    def _adopt(self, run: Run, specs: Mapping[str, TaskSpec]) -> None:
        """Put a claimed run in the lanes, as if it had been submitted here."""
        manager = self._manager
        spec = specs.get(run.task or "")
        loop = manager._loop
        if spec is None or loop is None or run.run_id in manager._jobs:
            manager._log.warning("claimed_run_skipped", run_id=run.run_id, task=run.task)
            return
        call = run.args or {}
        args, kwargs = call.get("args", []), call.get("kwargs", {})
        assert isinstance(args, list)
        assert isinstance(kwargs, dict)
        fn = spec.fn
        if is_async_callable(fn):
            factory: Callable[[], Awaitable[Any]] = functools.partial(fn, *args, **kwargs)
        else:
            factory = manager._threads.factory(fn, tuple(args), kwargs)
        job = Job.of_run(run, run.name, None, manager._default_timeout, factory, spec.retry)
        job.task, job.args = run.task, run.args
        job.idempotency_key, job.requeued_from = run.idempotency_key, run.requeued_from
        job.requeue_on_interrupt = run.requeue_on_interrupt
        # The claim recorded it RUNNING: its start writes nothing (see `Job.claimed`).
        job.status, job.owner, job.claimed = run.status, run.owner, True
        started = run.started_at
        job.started_at = job.heartbeat_at = None if started is None else dt_to_us(started)
        job.context = None  # nothing of this loop's context belongs to the run
        manager._writer.adopt(job)
        manager._register(job)
        self._claimed.add(job)
        manager._push(job, loop)

    # -- shutdown -----------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Stop claiming, then give back the claimed runs that have not started."""
        self._stopping = True
        self._wakeups.cancel()
        self._woken.set()
        task = self._task
        if task is not None and not task.done():
            # Its registry call is shielded: wait for it rather than cut it.
            await asyncio.wait({task}, timeout=timeout)
        manager = self._manager
        # Claimed ones not started yet, and retries waiting for their backoff.
        unstarted = [
            job for job in manager._jobs.values() if job.task is not None and job.state == QUEUED
        ]
        self._claimed.clear()
        if not unstarted:
            return
        for job in unstarted:
            manager._drop_queued(job)
        registry = manager.registry
        ids = [job.run_id for job in unstarted]
        try:
            async with asyncio.timeout(timeout):
                await uncut(manager._writer.flush())  # a retry's QUEUED write lands first
                if isinstance(registry, TaskClaiming):
                    await uncut(registry.release_runs(manager.owner, ids))
        except Exception as exc:
            manager._log.warning(
                "claimed_runs_not_released",
                runs=len(ids),
                error=f"{type(exc).__name__}: {exc}",
                detail="the runs stay claimed by this manager until its lease expires; "
                "another manager then claims them",
            )
        else:
            manager._log.info("claimed_runs_released", runs=len(ids))
        for job in unstarted:
            waiters, job.waiters = job.waiters, None
            for fut in waiters or ():
                if not fut.done():
                    fut.set_result(None)
            manager._forget(job)
