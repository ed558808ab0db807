"""Timestamps as integer microseconds since the epoch: exact, small and cheap to take."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["EPOCH", "dt_to_us", "now_us", "us_to_dt"]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)


def now_us() -> int:
    """Microseconds since the epoch, now."""
    return time.time_ns() // 1000


def dt_to_us(value: datetime) -> int:
    """An aware datetime as exact microseconds since the epoch."""
    return (value - EPOCH) // _US


def us_to_dt(value: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=value)
