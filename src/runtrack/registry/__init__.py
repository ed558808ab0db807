"""Registries: where runs are recorded.

`RunRegistry` is the protocol; `InMemoryRunRegistry` is the default. The SQL and Redis
backends live in ``runtrack.registry.sql`` and ``runtrack.registry.redis`` and need the
``sql`` / ``redis`` extras; `registry_from_url` picks one from a URL.
"""

from runtrack.registry._claiming import TaskClaiming
from runtrack.registry._url import SCHEMES, registry_from_url
from runtrack.registry.base import OutputTrimming, RunRegistry
from runtrack.registry.memory import InMemoryRunRegistry

__all__ = [
    "SCHEMES",
    "InMemoryRunRegistry",
    "OutputTrimming",
    "RunRegistry",
    "TaskClaiming",
    "registry_from_url",
]
