"""`IdempotentAdding`: insert a run unless a run with the same idempotency key is alive.

A submission with ``idempotency_key="k"`` returns the run that already has that key while
it is active (QUEUED or RUNNING) or finished less than ``ttl`` ago, else records a new
run: one atomic step in the registry, so two processes submitting the same key at once
get one run. The memory registry does it directly, SQL in one transaction over a key table
(``{prefix}idempotency``: key -> run id, a unique key), Redis in one Lua script.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final, Protocol, runtime_checkable

from runtrack._models import MAX_ID_LENGTH, Run
from runtrack._status import RunStatus

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL",
    "IdempotentAdding",
    "check_idempotency_key",
    "check_idempotency_ttl",
    "check_once_args",
    "key_holds",
    "ttl_us",
]

#: How long a finished run keeps its idempotency key by default.
DEFAULT_IDEMPOTENCY_TTL: Final = timedelta(hours=24)


@runtime_checkable
class IdempotentAdding(Protocol):
    """**Protocol:** a registry that inserts a run unless its idempotency key is taken.

    The memory, SQL and Redis registries implement it; `BackgroundTaskManager.submit`
    with ``idempotency_key=`` needs it.
    """

    async def add_run_once(self, run: Run, *, ttl: timedelta) -> tuple[Run, bool]:
        """Insert ``run`` unless a run with its ``idempotency_key`` holds the key.

        A run holds its key while it is not finished, and for ``ttl`` after it finished.
        Atomic across processes: of concurrent calls with one key, one inserts.

        Returns:
            ``(run, True)`` if ``run`` was inserted, else ``(existing, False)``: the run
            that holds the key.

        Raises:
            ValueError: ``run.idempotency_key`` is None.
            DuplicateRunError: a run with ``run.run_id`` exists (and the key was free).
            RegistryUnavailableError: the backend could not be reached.
        """
        ...


def check_idempotency_key(key: object) -> str:
    """The key, or a `TypeError` / `ValueError` that names ``idempotency_key``.

    Raises:
        TypeError: not a str.
        ValueError: empty, longer than 255 characters, or holding a NUL.
    """
    if not isinstance(key, str):
        raise TypeError(
            f"idempotency_key must be a str such as 'invoice-42', got {type(key).__name__}"
        )
    if not key or len(key) > MAX_ID_LENGTH:
        raise ValueError(
            f"idempotency_key must be 1 to {MAX_ID_LENGTH} characters, got {len(key)}: use "
            f"an id of the work (or a hash of it)"
        )
    if "\x00" in key:
        raise ValueError("idempotency_key must not hold NUL characters")
    return key


def check_idempotency_ttl(ttl: object) -> timedelta:
    """``idempotency_ttl``: a `timedelta` > 0, or a `TypeError` / `ValueError` naming it."""
    if not isinstance(ttl, timedelta):
        raise TypeError(
            f"idempotency_ttl must be a datetime.timedelta such as timedelta(hours=24), "
            f"got {type(ttl).__name__}"
        )
    if ttl <= timedelta(0):
        raise ValueError(f"idempotency_ttl must be > 0, got {ttl!r}")
    return ttl


def check_once_args(run: object, ttl: object) -> tuple[str, int]:
    """Check the arguments of `IdempotentAdding.add_run_once`.

    Returns:
        The run's idempotency key, and ``ttl`` in µs.

    Raises:
        TypeError: ``run`` is not a `Run`, or ``ttl`` not a `timedelta`.
        ValueError: the run has no idempotency key, or ``ttl`` is not > 0.
    """
    if not isinstance(run, Run):
        raise TypeError(f"add_run_once() takes a runtrack.Run, got {type(run).__name__}")
    if run.idempotency_key is None:
        raise ValueError("add_run_once() needs a run with an idempotency_key")
    return run.idempotency_key, ttl_us(check_idempotency_ttl(ttl))


def ttl_us(ttl: timedelta) -> int:
    """``ttl`` in whole microseconds."""
    return ttl // timedelta(microseconds=1)


def key_holds(
    status: RunStatus | str, finished_at: int | None, created_at: int, now: int, ttl: int
) -> bool:
    """Whether a run still holds its idempotency key at ``now`` (all times in µs)."""
    if not RunStatus(status).is_terminal:
        return True
    ended = finished_at if finished_at is not None else created_at
    return ended > now - ttl
