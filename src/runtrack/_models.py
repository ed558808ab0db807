"""The data runtrack records: `Run`, `OutputChunk`, `Retry` and `RunEvent`."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from runtrack._status import RunStatus

__all__ = [
    "MAX_ID_LENGTH",
    "Attempt",
    "OutputChunk",
    "Progress",
    "Retry",
    "Run",
    "RunEvent",
    "Seconds",
    "Tags",
    "UTCDatetime",
    "new_run_id",
    "utcnow",
]

#: Longest run id, name, group, tag key or tag value accepted (SQL indexes need a bound).
MAX_ID_LENGTH: Final = 255


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def _uuid4_strings() -> Iterator[str]:
    """UUID4 strings from os.urandom drawn in bulk: one syscall per 256 ids."""
    variant = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
    while True:
        h = os.urandom(4096).hex()
        for i in range(0, 8192, 32):
            yield (
                f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
                f"{variant[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
            )


_ids = _uuid4_strings()


def _reset_ids() -> None:
    global _ids  # noqa: PLW0603 - a forked child must not reuse the parent's random bytes
    _ids = _uuid4_strings()


os.register_at_fork(after_in_child=_reset_ids)


def new_run_id() -> str:
    """Return a fresh random UUID4 string, like ``str(uuid.uuid4())`` but faster."""
    return next(_ids)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UTCDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
Ident = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
TagText = Annotated[str, Field(max_length=MAX_ID_LENGTH)]
Tags = dict[TagText, TagText]
Attempt = Annotated[int, Field(ge=1)]
Progress = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: What SQL databases store as an integer: a priority beyond it could never be recorded.
Priority = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


def _finite(value: Any) -> Any:
    """Reject NaN and infinities anywhere in a JSON value: JSON has no such numbers."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            if not math.isfinite(item):
                raise ValueError(
                    f"{item!r} is not a JSON number: use null or a string for NaN and infinity"
                )
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


#: A JSON value as every registry can store it (no NaN, no infinities).
Json = Annotated[JsonValue, AfterValidator(_finite)]
Parameters = Annotated[dict[str, JsonValue], AfterValidator(_finite)]


class Run(BaseModel):
    """One tracked piece of background work, as the registry records it.

    A `Run` is immutable: registries and managers hand out fresh copies, and changes go
    through `RunRegistry.transition` or `RunRegistry.update_run`.

    Example:
        >>> from runtrack import Run
        >>> run = Run(name="send_report", parameters={"user": 42}, tags={"team": "billing"})
        >>> run.status
        <RunStatus.QUEUED: 'queued'>
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    run_id: Ident = Field(default_factory=new_run_id)
    """Unique id; a fresh UUID4 string unless given."""
    name: Annotated[str, Field(max_length=MAX_ID_LENGTH)] = ""
    """The kind of work; empty means "the coroutine function's qualified name"."""
    status: RunStatus = RunStatus.QUEUED
    created_at: UTCDatetime = Field(default_factory=utcnow)
    started_at: UTCDatetime | None = None
    finished_at: UTCDatetime | None = None
    parameters: Parameters = Field(default_factory=dict)
    """JSON arguments describing the work (shown in dashboards, used for retries)."""
    tags: Tags = Field(default_factory=dict)
    group: Ident | None = None
    """Concurrency group: ``group_limits`` caps how many runs of a group run at once."""
    priority: Priority = 0
    """Higher runs first among waiting runs; FIFO within one priority."""
    timeout: Seconds | None = None
    """Seconds before the run is stopped and recorded FAILED with ``TimeoutError``."""
    attempt: Attempt = 1
    max_attempts: Attempt = 1
    progress: Progress | None = None
    progress_message: str | None = None
    result: Json = None
    error_type: str | None = None
    """The exception's class name when the run failed, e.g. ``ValueError``."""
    error_message: str | None = None
    owner: str | None = None
    """The manager that runs (or ran) it."""
    heartbeat_at: UTCDatetime | None = None

    if not TYPE_CHECKING:  # keep the pydantic-generated signature for type checkers

        def __init__(self, /, **data: Any) -> None:
            # Fast path for the common Run(name=..., run_id=..., group=..., priority=...):
            # the same checks pydantic would make, without its per-field machinery, because
            # a Run is built for every start_task() call. Anything else is validated fully.
            if data.keys() <= _FAST_FIELDS and _fast_valid(data):
                values = self.__dict__
                values.update(_FAST_TEMPLATE)
                values["run_id"] = next(_ids)
                values["created_at"] = datetime.now(UTC)
                values["parameters"] = {}
                values["tags"] = {}
                values.update(data)
                _set_fields_set(self, set(data))
                _set_extra(self, None)
                _set_private(self, None)
                return
            super().__init__(**data)

    @property
    def is_finished(self) -> bool:
        """Whether the status is terminal (COMPLETED, FAILED or CANCELLED)."""
        return self.status.is_terminal

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, or None while not both are known."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


_FAST_FIELDS: Final = frozenset({"name", "run_id", "group", "priority"})
# Every field in declaration order (so dumps and reprs match), factories filled per instance.
_FAST_TEMPLATE: Final = {
    name: None if field.default_factory is not None else field.default
    for name, field in Run.model_fields.items()
}
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _fast_valid(data: dict[str, Any]) -> bool:
    """Whether ``data`` (keys within _FAST_FIELDS) is valid as it stands."""
    name = data.get("name", "")
    if type(name) is not str or len(name) > MAX_ID_LENGTH:
        return False
    if "run_id" in data:
        run_id = data["run_id"]
        if type(run_id) is not str or not 1 <= len(run_id) <= MAX_ID_LENGTH:
            return False
    group = data.get("group")
    if group is not None and (type(group) is not str or not 1 <= len(group) <= MAX_ID_LENGTH):
        return False
    priority = data.get("priority", 0)
    return type(priority) is int and -(2**63) <= priority < 2**63


class OutputChunk(BaseModel):
    """A piece of a run's output, numbered from 1 in the order it was appended."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: Annotated[int, Field(ge=1)]
    stream: Annotated[str, Field(min_length=1, max_length=64)] = "stdout"
    text: str
    at: UTCDatetime = Field(default_factory=utcnow)


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """How a failed run is retried (only runs submitted as a callable can be retried).

    The delay before attempt ``n + 1`` is ``backoff * factor ** (n - 1)`` seconds, capped at
    ``max_backoff``; ``backoff`` may also be a function of the failed attempt number.

    Args:
        attempts: Total attempts, the first one included (``attempts=3`` retries twice).
        backoff: Seconds before the first retry, or ``f(failed_attempt) -> seconds``.
        factor: Multiplier applied for each further retry.
        max_backoff: Upper bound of any delay.
        on: Exception classes that cause a retry; others fail the run at once.

    Example:
        >>> from runtrack import Retry
        >>> Retry(attempts=4, backoff=0.5).delay(3)
        2.0
    """

    attempts: int = 3
    backoff: float | Callable[[int], float] = 1.0
    factor: float = 2.0
    max_backoff: float = 300.0
    on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        attempts: object = self.attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ValueError(f"Retry(attempts={self.attempts!r}): attempts must be an int >= 1")
        if not callable(self.backoff) and self.backoff < 0:
            raise ValueError(f"Retry(backoff={self.backoff!r}): backoff must be >= 0 seconds")
        if self.factor < 1:
            raise ValueError(f"Retry(factor={self.factor!r}): factor must be >= 1")
        on: object = self.on
        if (
            not isinstance(on, tuple)
            or not on
            or not all(isinstance(e, type) and issubclass(e, Exception) for e in on)
        ):
            raise TypeError(
                f"Retry(on=...) takes a non-empty tuple of Exception subclasses, got {self.on!r}"
            )

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` failed."""
        if callable(self.backoff):
            value = float(self.backoff(failed_attempt))
        else:
            value = self.backoff * self.factor ** (failed_attempt - 1)
        return max(0.0, min(value, self.max_backoff))

    def should_retry(self, exc: BaseException, failed_attempt: int) -> bool:
        """Whether a run that raised ``exc`` on ``failed_attempt`` gets another attempt."""
        return failed_attempt < self.attempts and isinstance(exc, self.on)


@dataclasses.dataclass(frozen=True, slots=True)
class RunEvent:
    """A status change, as given to listeners registered with ``add_listener``.

    Attributes:
        run_id: The run that changed.
        name: Its name.
        status: The new status.
        previous: The status before, or None for a newly recorded run.
        at: When it happened (UTC).
        attempt: The attempt number.
        group: The run's concurrency group.
        error_type: The exception class name, for FAILED runs.
        error_message: The exception message, for FAILED runs.
        duration: Seconds the attempt ran, for runs that finished after starting.
    """

    run_id: str
    name: str
    status: RunStatus
    previous: RunStatus | None
    at: datetime
    attempt: int = 1
    group: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    duration: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict (for SSE streams, webhooks, metrics)."""
        return {
            "run_id": self.run_id,
            "name": self.name,
            "status": self.status.value,
            "previous": None if self.previous is None else self.previous.value,
            "at": self.at.isoformat(),
            "attempt": self.attempt,
            "group": self.group,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "duration": self.duration,
        }
