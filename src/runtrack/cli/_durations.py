"""Durations and ages on the command line: ``30s``, ``15m``, ``2h``, ``7d``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import click

__all__ = ["DURATION", "DurationType", "parse_duration"]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PATTERN: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_FORMS: Final = "a number and a unit: 30s, 15m, 2h, 7d or 1w (several add up: 1h30m)"


def parse_duration(text: str) -> timedelta:
    """Parse ``30s``, ``15m``, ``2h``, ``7d``, ``1w`` or a sum of them such as ``1h30m``.

    Raises:
        ValueError: ``text`` is not such a duration.
    """
    cleaned = text.strip().lower()
    position, seconds = 0, 0.0
    for match in _PATTERN.finditer(cleaned):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not cleaned or position != len(cleaned):
        raise ValueError(f"{text!r} is not a duration: use {_FORMS}")
    return timedelta(seconds=seconds)


if TYPE_CHECKING:  # generic in the click that type-checks; plain in older ones
    _ParamType = click.ParamType[timedelta, Any]
else:
    _ParamType = click.ParamType


class DurationType(_ParamType):
    """A click parameter type for durations; the value is a `timedelta`."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        """Turn the option's text into a `timedelta` (a usage error when it is not one)."""
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: The shared instance, for ``type=DURATION``.
DURATION: Final = DurationType()
