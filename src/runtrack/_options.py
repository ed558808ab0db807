"""A manager's options, checked once when it is built.

Every bad value is a `ValueError` (or `TypeError`) naming the option, raised by
`Options.check` before the manager exists, so nothing half-built is left behind.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from runtrack._submission import check_limit
from runtrack.registry._idempotency import DEFAULT_IDEMPOTENCY_TTL, check_idempotency_ttl
from runtrack.registry.base import is_int

__all__ = ["UNBOUNDED", "Options"]

#: The concurrency limit that stands for "no limit".
UNBOUNDED: Final = sys.maxsize


@dataclass(frozen=True, slots=True)
class Options:
    """The checked options of a `BackgroundTaskManager` (its keyword arguments)."""

    max_concurrency: int | None
    max_pending: int | None
    group_limits: dict[str, int]
    default_timeout: float | None
    shutdown_grace: float
    heartbeat_interval: float
    lease: timedelta
    cancel_timeout: float
    registry_timeout: float
    max_payload_bytes: int | None
    max_threads: int
    poll_interval: float = 1.0
    idempotency_ttl: timedelta = DEFAULT_IDEMPOTENCY_TTL

    @classmethod
    def check(
        cls,
        *,
        max_concurrency: int | None,
        max_pending: int | None,
        group_limits: Mapping[str, int] | None,
        default_timeout: float | None,
        shutdown_grace: float,
        heartbeat_interval: float,
        lease: float | None,
        cancel_timeout: float,
        registry_timeout: float,
        max_payload_bytes: int | None,
        max_threads: int,
        poll_interval: float = 1.0,
        idempotency_ttl: timedelta = DEFAULT_IDEMPOTENCY_TTL,
    ) -> Options:
        """Check every option; the lease defaults to six heartbeat intervals.

        Raises:
            ValueError: an option is out of range (the message names it).
        """
        check_limit("max_concurrency", max_concurrency)
        check_limit("max_threads", max_threads)
        check_limit("max_payload_bytes", max_payload_bytes)
        check_idempotency_ttl(idempotency_ttl)
        pending: object = max_pending
        if pending is not None and (not is_int(pending) or max_pending < 0):  # type: ignore[operator]
            raise ValueError(f"max_pending must be None or an int >= 0, got {max_pending!r}")
        limits = dict(group_limits or {})
        for group, limit in limits.items():
            check_limit(f"group_limits[{group!r}]", limit)
        for name, seconds in (
            ("default_timeout", default_timeout),
            ("heartbeat_interval", heartbeat_interval),
            ("poll_interval", poll_interval),
            ("cancel_timeout", cancel_timeout),
            ("registry_timeout", registry_timeout),
        ):
            if seconds is not None and not seconds > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {seconds!r}")
        if shutdown_grace < 0:
            raise ValueError(f"shutdown_grace must be >= 0 seconds, got {shutdown_grace!r}")
        if lease is None:
            lease = 6 * heartbeat_interval
        elif isinstance(lease, bool) or not lease > heartbeat_interval or math.isinf(lease):
            raise ValueError(
                f"lease must be a finite number of seconds above heartbeat_interval "
                f"({heartbeat_interval!r}), got {lease!r}"
            )
        return cls(
            max_concurrency=max_concurrency,
            max_pending=max_pending,
            group_limits=limits,
            default_timeout=default_timeout,
            shutdown_grace=shutdown_grace,
            heartbeat_interval=heartbeat_interval,
            lease=timedelta(seconds=lease),
            cancel_timeout=cancel_timeout,
            registry_timeout=registry_timeout,
            max_payload_bytes=max_payload_bytes,
            max_threads=max_threads,
            poll_interval=poll_interval,
            idempotency_ttl=idempotency_ttl,
        )
