"""Waiting runs and the order they are admitted in.

A waiting run is a `Job` in a `Lanes` structure: one lane per concurrency group, each lane a
deque per priority. Admission pops the highest priority (FIFO within it) among the lanes whose
group has a free slot. Waiting costs no Task and no semaphore: executors pull from here.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any, Final

from runtrack._status import RunStatus
from runtrack._storable import MAX_ERROR_MESSAGE, storable_text
from runtrack.registry.memory import _Record

if TYPE_CHECKING:
    import asyncio

    from runtrack._models import Retry, Run

__all__ = ["DONE", "FINISHING", "QUEUED", "RUNNING", "SUBMITTING", "Job", "Lanes", "describe_error"]

QUEUED: Final = 0
RUNNING: Final = 1
FINISHING: Final = 2  # the coroutine ended; its terminal write is on its way (QueueWriter)
DONE: Final = 3
SUBMITTING: Final = 4  # submit() waits for its QUEUED record: not in the lanes yet


class Job(_Record):
    """A run this manager holds: its record fields, what to execute, and where it is.

    On an `InMemoryRunRegistry` the job itself is the stored record (``rec is self``); on
    other registries ``rec`` is None and the record fields are what the writer sends.
    Timestamps (``created_at`` ...) are integer microseconds since the epoch.
    """

    __slots__ = (
        "aio_task",
        "cancel_requested",
        "claimed",
        "context",
        "coro",
        "factory",
        "outcome",
        "rec",
        "refusal",
        "retry",
        "seq",
        "started",
        "state",
        "timer",
        "waiters",
    )

    # Set later, when first needed: seq (by Lanes.push), started (when it runs), outcome.
    seq: int
    started: float
    outcome: tuple[RunStatus, float | None, BaseException | None]

    def __init__(
        self,
        run_id: str,
        name: str,
        coro: Awaitable[Any] | None,
        created_at: int,
        group: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        parameters: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        factory: Callable[[], Awaitable[Any]] | None = None,
        retry: Retry | None = None,
        attempt: int = 1,
        max_attempts: int = 1,
    ) -> None:
        self.run_id = run_id
        self.name = name
        self.status = RunStatus.QUEUED
        self.created_at = created_at
        self.started_at = self.finished_at = self.heartbeat_at = None
        self.parameters = parameters
        self.tags = tags
        self.group = group
        self.priority = priority
        self.timeout = timeout
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.progress = self.progress_message = self.result = None
        self.error_type = self.error_message = self.owner = None
        self.task = self.args = self.idempotency_key = self.requeued_from = None
        self.not_before: int | None = None
        self.dead = self.requeue_on_interrupt = False
        self.coro = coro
        self.factory = factory
        self.retry = retry
        self.state = QUEUED
        self.cancel_requested = False
        # A durable run this manager claimed: the claim recorded it RUNNING, so its start
        # writes nothing (cleared when it starts).
        self.claimed = False
        self.aio_task: asyncio.Task[None] | None = None
        self.waiters: list[asyncio.Future[None]] | None = None
        # A delayed job's timer, or the task that holds it until its id is known to be free.
        self.timer: asyncio.TimerHandle | asyncio.Task[None] | None = None
        self.rec: _Record | None = None
        self.refusal: BaseException | None = None  # why the registry refused its record
        # The caller's context variables, which the run sees, as with asyncio.create_task
        # (None when there are none: nothing to keep alive while the run waits).
        context = copy_context()
        self.context: Context | None = context if len(context) else None

    @classmethod
    def of_run(
        cls,
        run: Run,
        name: str,
        coro: Awaitable[Any] | None,
        default_timeout: float | None,
        factory: Callable[[], Awaitable[Any]] | None = None,
        retry: Retry | None = None,
    ) -> Job:
        """A queued job for ``run``, named ``name``, that executes ``coro`` or ``factory``.

        ``default_timeout`` applies when the run sets none. On the hot path: one call per run.
        """
        timeout = run.timeout
        return cls(
            run.run_id,
            name,
            coro,
            # Exact for an aware datetime (a validated Run's), as dt_to_us.
            round(run.created_at.timestamp() * 1_000_000),
            run.group,
            run.priority,
            default_timeout if timeout is None else timeout,
            run.parameters or None,
            run.tags or None,
            factory,
            retry,
            run.attempt,
            run.max_attempts,
        )

    def release(self) -> None:
        """Drop what only execution needed, once the job is done (it may live on as a record)."""
        self.coro = self.factory = self.retry = self.aio_task = self.timer = self.rec = None
        self.context = None


class _Lane:
    """Waiting jobs of one group: a deque per priority and a heap of the priorities present."""

    __slots__ = ("buckets", "prios", "size")

    def __init__(self) -> None:
        self.buckets: dict[int, deque[Job]] = {}
        self.prios: list[int] = []  # negated priorities, a min-heap
        self.size = 0  # live jobs; cancelled ones stay in their deque until reached

    def push(self, job: Job) -> None:
        self.size += 1
        bucket = self.buckets.get(job.priority)
        if bucket is None:
            bucket = self.buckets[job.priority] = deque()
            heapq.heappush(self.prios, -job.priority)
        bucket.append(job)

    def head(self) -> Job | None:
        """The next live job, dropping jobs cancelled while they waited."""
        while self.prios:
            prio = -self.prios[0]
            bucket = self.buckets[prio]
            while bucket:
                job = bucket[0]
                if job.state == QUEUED:
                    return job
                bucket.popleft()
            del self.buckets[prio]
            heapq.heappop(self.prios)
        return None

    def pop(self) -> Job | None:
        """Remove and return the next live job (the fast path without groups)."""
        prios = self.prios
        while prios:
            prio = -prios[0]
            bucket = self.buckets[prio]
            while bucket:
                job = bucket.popleft()
                if job.state == QUEUED:
                    self.size -= 1
                    if not bucket:
                        del self.buckets[prio]
                        heapq.heappop(prios)
                    return job
            del self.buckets[prio]
            heapq.heappop(prios)
        return None

    def pop_head(self) -> None:
        self.size -= 1
        prio = -self.prios[0]
        bucket = self.buckets[prio]
        bucket.popleft()
        if not bucket:
            del self.buckets[prio]
            heapq.heappop(self.prios)


class Lanes:
    """Every waiting job of a manager, in admission order, with per-group running counts."""

    __slots__ = ("_lanes", "_seq", "group_limits", "running_by_group")

    def __init__(self, group_limits: dict[str, int]) -> None:
        self._lanes: dict[str | None, _Lane] = {}
        self._seq = 0
        self.group_limits = group_limits
        self.running_by_group: dict[str, int] = {}

    def push(self, job: Job) -> None:
        """Add a waiting job (it keeps its place among equals: FIFO)."""
        self._seq += 1
        job.seq = self._seq
        lane = self._lanes.get(job.group)
        if lane is None:
            lane = self._lanes[job.group] = _Lane()
        lane.push(job)

    def pop(self) -> Job | None:
        """Take the job to admit next, or None if no waiting job may start now.

        The job's group (if any) is charged a running slot; `release` gives it back.
        """
        lanes = self._lanes
        if len(lanes) == 1 and None in lanes:
            return lanes[None].pop()
        best: Job | None = None
        best_lane: _Lane | None = None
        limits = self.group_limits
        running = self.running_by_group
        for group, lane in lanes.items():
            if group is not None:
                limit = limits.get(group)
                if limit is not None and running.get(group, 0) >= limit:
                    continue
            job = lane.head()
            if job is None:
                continue
            if best is None or (job.priority, -job.seq) > (best.priority, -best.seq):
                best, best_lane = job, lane
        if best is None or best_lane is None:
            return None
        best_lane.pop_head()
        if best.group is not None:
            running[best.group] = running.get(best.group, 0) + 1
        return best

    def discard(self, job: Job) -> None:
        """Forget a waiting job that was cancelled (it stays in its deque, skipped)."""
        self._lanes[job.group].size -= 1

    def admissible(self) -> int:
        """How many waiting jobs could start now if executors were free."""
        total = 0
        for group, lane in self._lanes.items():
            if group is None or (limit := self.group_limits.get(group)) is None:
                total += lane.size
            else:
                total += max(0, min(lane.size, limit - self.running_by_group.get(group, 0)))
        return total

    def release(self, job: Job) -> None:
        """Give back the group slot a popped job held."""
        if job.group is not None:
            left = self.running_by_group[job.group] - 1
            if left:
                self.running_by_group[job.group] = left
            else:
                del self.running_by_group[job.group]

    def drain(self) -> Iterator[Job]:
        """Remove and yield every job still waiting."""
        lanes, self._lanes = self._lanes, {}
        for lane in lanes.values():
            for bucket in lane.buckets.values():
                for job in bucket:
                    if job.state == QUEUED:
                        yield job


def describe_error(error: BaseException, job: Job) -> str:
    """The error message recorded for a failed attempt, as every registry can store it."""
    try:
        message = str(error)
    except Exception:  # a broken __str__ must not lose the failure
        message = ""
    if not message:
        if isinstance(error, TimeoutError) and job.timeout is not None:
            return f"the run took longer than its timeout of {job.timeout:g}s"
        try:
            message = repr(error)
        except Exception:
            message = type(error).__name__
    return storable_text(message, MAX_ERROR_MESSAGE)
