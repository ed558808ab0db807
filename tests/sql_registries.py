"""Conformance-suite factories for the sql registries (see `registries.py`)."""

from __future__ import annotations

from typing import Final

from registries import RegistryFactory

#: ``(test id, factory)`` pairs appended to `registries.REGISTRIES`.
SQL_REGISTRIES: Final[list[tuple[str, RegistryFactory]]] = []
