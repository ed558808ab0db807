"""Conformance-suite factories for the redis registries (see `registries.py`)."""

from __future__ import annotations

from typing import Final

from registries import RegistryFactory

#: ``(test id, factory)`` pairs appended to `registries.REGISTRIES`.
REDIS_REGISTRIES: Final[list[tuple[str, RegistryFactory]]] = []
