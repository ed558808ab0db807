"""The data runtrack records: `Run`, `OutputChunk`, `Retry` and `RunEvent`."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from runtrack._status import RunStatus
from runtrack._storable import MAX_DEPTH
from runtrack._storable import UNSTORABLE as _UNSTORABLE
from runtrack._storable import is_storable as _storable

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
    "args_problem",
    "json_time",
    "new_run_id",
    "trusted_run",
    "utcnow",
]

#: Longest run id, name, group, tag key or tag value accepted (SQL indexes need a bound).
MAX_ID_LENGTH: Final = 255


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def json_time(value: datetime) -> str:
    """``value`` in UTC as ISO 8601 text, as pydantic writes it in JSON (``...Z``).

    Example:
        >>> json_time(datetime(2025, 1, 2, 3, 4, 5, 600000, tzinfo=UTC))
        '2025-01-02T03:04:05.600000Z'
    """
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z"  # isoformat() ends a UTC time with "+00:00"


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
TagText = Annotated[str, Field(max_length=MAX_ID_LENGTH)]
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
                raise ValueError(_not_a_number(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def _not_a_number(value: float) -> str:
    return f"{value!r} is not a JSON number: use null or a string for NaN and infinity"


#: Objects and arrays nested deeper than this are refused (see `runtrack._storable`).
MAX_JSON_DEPTH: Final = MAX_DEPTH


def _unstorable(text: str, what: str) -> str:
    """Why ``text`` (which fails `_storable`) cannot be recorded, and what to do."""
    found = _UNSTORABLE.search(text)
    assert found is not None
    char, at = found.group(), found.start()
    if char == "\x00":
        return (
            f"{what} contains a NUL character ('\\x00') at index {at}, which databases "
            f"cannot store: remove it, or encode binary data (base64, hex) first"
        )
    return (
        f"{what} contains a lone surrogate ({char!r}) at index {at}, which is not valid "
        f"UTF-8 (bytes decoded with errors='surrogateescape'?): decode with "
        f"errors='replace', or remove it"
    )


def _tags_problem(tags: Mapping[Any, Any]) -> str | None:
    for key, value in tags.items():
        # Printable text is storable; only the rest is searched.
        if type(key) is str and not key.isprintable() and _UNSTORABLE.search(key):
            return _unstorable(key, f"tag key {key!r}")
        if type(value) is str and not value.isprintable() and _UNSTORABLE.search(value):
            return _unstorable(value, f"tag {key!r}")
    return None


def _check_tags(tags: object) -> object:
    """Refuse NUL and surrogates in changed tags (`RunRegistry.update_run`)."""
    if isinstance(tags, Mapping):
        problem = _tags_problem(tags)
        if problem is not None:
            raise ValueError(problem)
    return tags


def _parameters_problem(parameters: dict[str, Any], what: str = "parameters") -> str | None:
    """Why a registry could not store ``parameters`` (the field ``what``), or None.

    NaN and infinities, NUL and surrogates in keys and strings, nesting deeper than
    MariaDB's JSON columns take. One walk, level by level (so the depth comes free), that
    descends only into containers.
    """
    level: list[Any] = [parameters]
    depth = 1
    while level:
        deeper: list[Any] = []
        for container in level:
            if isinstance(container, dict):
                for key in container:
                    if type(key) is str and (
                        "\x00" in key if key.isascii() else _UNSTORABLE.search(key)
                    ):
                        return _where_unstorable(parameters, what)
                items = container.values()
            else:
                items = container
            for item in items:
                kind = type(item)
                if kind is str:
                    if "\x00" in item if item.isascii() else _UNSTORABLE.search(item):
                        return _where_unstorable(parameters, what)
                elif kind is dict or kind is list:
                    deeper.append(item)
                elif kind is int or kind is bool or item is None:
                    pass
                elif isinstance(item, float):
                    if not math.isfinite(item):
                        return _not_a_number(item)
                elif isinstance(item, dict | list):
                    deeper.append(item)
                elif isinstance(item, str) and not _storable(item):
                    return _where_unstorable(parameters, what)
        if deeper:
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return (
                    f"{what} nest objects and arrays more than {MAX_JSON_DEPTH} levels "
                    f"deep ({what} itself is level 1), which MariaDB's JSON columns "
                    f"refuse: flatten them, or pass the deep part as a JSON string"
                )
        level = deeper
    return None


def args_problem(args: dict[str, Any]) -> str | None:
    """Why a registry could not store a durable run's ``args`` (plain JSON), or None."""
    return _parameters_problem(args, "args")


def _where_unstorable(parameters: dict[str, Any], what: str = "parameters") -> str:
    """The message for a key or string in ``parameters`` that is not storable, with its path."""
    stack: list[tuple[str, Any]] = [(what, parameters)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and not _storable(key):
                    return _unstorable(key, f"a key of {path}")
                stack.append((f"{path}[{key!r}]", item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str) and not _storable(value):
            return _unstorable(value, path)
    raise AssertionError(f"no unstorable text in {what}")  # pragma: no cover


def _check_new_run(data: dict[str, Any]) -> None:
    """Refuse, in the fields of a new run, what no registry could store.

    Runs read back from a registry (`Run.model_validate`) are not checked for text and
    depth again, so a record stored by an earlier version still reads.

    Raises:
        ValidationError: NUL or a surrogate in ``run_id``, ``name``, ``group``, tags or
            parameters; NaN or an infinity in parameters; parameters nested too deep; an
            empty ``name``.
    """
    for field in ("run_id", "name", "group", "task", "idempotency_key", "requeued_from"):
        value = data.get(field)
        if type(value) is str and not value.isprintable() and _UNSTORABLE.search(value):
            raise _invalid(field, value, _unstorable(value, field))
    if data.get("name") == "":
        raise _invalid(
            "name",
            "",
            "a run needs a name: pass a non-empty name, or leave name out and the manager "
            "records the function's qualified name",
        )
    tags = data.get("tags")
    if tags and (type(tags) is dict or isinstance(tags, Mapping)):
        problem = _tags_problem(tags)
        if problem is not None:
            raise _invalid("tags", tags, problem)
    parameters = data.get("parameters")
    if parameters and (type(parameters) is dict or isinstance(parameters, Mapping)):
        problem = _parameters_problem(
            parameters if isinstance(parameters, dict) else dict(parameters)
        )
        if problem is not None:
            raise _invalid("parameters", parameters, problem)
    args = data.get("args")
    if args and (type(args) is dict or isinstance(args, Mapping)):
        problem = _parameters_problem(dict(args), "args")
        if problem is not None:
            raise _invalid("args", args, problem)


def _invalid(field: str, value: object, message: str) -> ValidationError:
    """A `ValidationError` of ``Run`` for ``field``, in pydantic's form like any other."""
    return ValidationError.from_exception_data(
        "Run",
        [
            InitErrorDetails(
                type=PydanticCustomError("unstorable", message), loc=(field,), input=value
            )
        ],
    )


Ident = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
#: Tag keys and values: up to MAX_ID_LENGTH characters; for a change, no NUL or surrogate.
Tags = Annotated[dict[TagText, TagText], BeforeValidator(_check_tags)]

#: The validation context of ``Run(...)``, whose parameters `_check_new_run` has checked.
_NEW_RUN: Final = object()


def _finite_parameters(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    if info.context is _NEW_RUN:  # checked already, in the same walk as the text
        return value
    return _finite(value)  # type: ignore[no-any-return]


def _task_args(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Check the shape of a durable run's ``args``: ``{"args": [...], "kwargs": {...}}``."""
    extra = value.keys() - {"args", "kwargs"}
    if extra:
        raise ValueError(
            f"args holds only the keys 'args' (a list) and 'kwargs' (an object), "
            f"not {', '.join(sorted(map(repr, extra)))}"
        )
    if not isinstance(value.get("args", []), list):
        raise ValueError("args['args'] must be a list of the positional arguments")
    if not isinstance(value.get("kwargs", {}), dict):
        raise ValueError("args['kwargs'] must be an object of the keyword arguments")
    return _finite_parameters(value, info)


#: A JSON value as every registry can store it (no NaN, no infinities).
Json = Annotated[JsonValue, AfterValidator(_finite)]
Parameters = Annotated[dict[str, JsonValue], AfterValidator(_finite_parameters)]
#: The arguments of a durable run: ``{"args": [...], "kwargs": {...}}``, JSON only.
TaskArgs = Annotated[dict[str, JsonValue], AfterValidator(_task_args)]


class Run(BaseModel):
    """One tracked piece of background work, as the registry records it.

    A `Run` is immutable: registries and managers hand out fresh copies, and changes go
    through `RunRegistry.transition` or `RunRegistry.update_run`.

    What no registry could store is refused when a run is built, with a `ValidationError`
    (a `ValueError`) that names the field: NUL characters and lone surrogates in
    ``run_id``, ``name``, ``group``, tags and ``parameters`` (keys and strings at any
    depth), ``parameters`` nested more than 31 levels (MariaDB's JSON limit), NaN and
    infinities, naive datetimes. ``Run(name="")`` is refused too: leave ``name`` out and
    the manager uses the function's qualified name. `Run.model_validate`, which registries
    use to read records back, checks types, numbers and datetimes but not text or depth,
    so what an earlier version stored still reads.

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
    """The kind of work. Left out, the manager uses the coroutine function's qualified name;
    an explicit empty name is refused."""
    status: RunStatus = RunStatus.QUEUED
    created_at: UTCDatetime = Field(default_factory=utcnow)
    started_at: UTCDatetime | None = None
    finished_at: UTCDatetime | None = None
    parameters: Parameters = Field(default_factory=dict)
    """JSON arguments describing the work (shown in dashboards, used for retries)."""
    tags: dict[TagText, TagText] = Field(default_factory=dict)
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
    task: Ident | None = None
    """The durable task this run executes (see ``manager.task``); None for a local run,
    which only the manager that started it can run."""
    args: TaskArgs | None = None
    """A durable run's JSON arguments: ``{"args": [...], "kwargs": {...}}``."""
    idempotency_key: Ident | None = None
    """The key a submission was deduplicated on, if any."""
    dead: bool = False
    """Whether this durable run failed for good, its retries exhausted (a dead letter)."""
    requeued_from: Ident | None = None
    """The run this one was requeued from (``manager.requeue``), if any."""
    requeue_on_interrupt: bool = False
    """Whether a durable run interrupted by its manager's death goes back to the queue
    (QUEUED, attempt + 1) rather than being recorded FAILED."""
    not_before: UTCDatetime | None = None
    """A durable run is not claimed before this time (``fn.submit(delay=...)``,
    ``manager.requeue(run_id, delay=...)``); None: claimable at once. Held by the registry,
    so the delay survives the process that submitted the run."""

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
            _check_new_run(data)
            self.__pydantic_validator__.validate_python(data, self_instance=self, context=_NEW_RUN)

        # Run.model_validate() (how registries read records back) skips this __init__: it
        # needs neither the fast path nor the checks of new runs, so a record stored by an
        # earlier version (or with the default "" name) still reads back.
        __init__.__pydantic_base_init__ = True

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


def trusted_run(data: dict[str, Any]) -> Run:
    """A `Run` of values known valid, built without validation.

    For records a registry of this version wrote and reads straight back (a claim reads
    hundreds per call): ``data`` holds field values of the right types (timestamps as
    aware UTC datetimes, ``status`` a `RunStatus`); missing fields take their defaults.
    """
    run = Run.__new__(Run)
    values = run.__dict__
    values.update(_FAST_TEMPLATE)
    values["parameters"] = {}
    values["tags"] = {}
    values.update(data)
    _set_fields_set(run, set(data))
    _set_extra(run, None)
    _set_private(run, None)
    return run


_MIN_PRIORITY: Final = -(2**63)
_PRIORITY_END: Final = 2**63


def _fast_valid(data: dict[str, Any]) -> bool:
    """Whether ``data`` (keys within _FAST_FIELDS) is valid as it stands.

    Text takes this path when it is printable, which rules out NUL and surrogates in one
    call; anything else (a tab, a wrong type) is left to the full validation.
    """
    for key, value in data.items():
        if key == "priority":
            if type(value) is not int or not _MIN_PRIORITY <= value < _PRIORITY_END:
                return False
        elif type(value) is str:
            if not 1 <= len(value) <= MAX_ID_LENGTH or not value.isprintable():
                return False
        elif value is not None or key != "group":
            return False
    return True


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
            "at": json_time(self.at),
            "attempt": self.attempt,
            "group": self.group,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "duration": self.duration,
        }
