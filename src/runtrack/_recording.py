"""Recording: which writer carries a manager's writes to its registry.

- the in-memory registry is written directly (`DirectWriter`): nothing to wait for;
- a registry that writes batches (SQL, Redis) gets group commits (`BatchWriter`);
- any other `RunRegistry` gets its calls queued in order (`QueueWriter`).
"""

from __future__ import annotations

from collections.abc import Callable

from runtrack._admission import Job
from runtrack._batch import BatchWriter
from runtrack._writer import DirectWriter, QueueWriter, Writer
from runtrack.registry.base import BatchWriting, RunRegistry
from runtrack.registry.memory import InMemoryRunRegistry

__all__ = ["backend_name", "writer_for"]


def backend_name(registry: RunRegistry) -> str:
    """The registry's backend as errors and logs name it (``"redis"``, ``"postgresql"``...)."""
    name: str = getattr(registry, "backend", type(registry).__name__)
    return name


def writer_for(
    registry: RunRegistry,
    owner: str,
    *,
    on_conflict: Callable[[str], None],
    on_finished: Callable[[Job, bool], None],
    registry_timeout: float,
) -> Writer:
    """The writer for ``registry``; the callbacks hear of refused and finished writes."""
    if isinstance(registry, InMemoryRunRegistry):
        return DirectWriter(registry, owner)
    if isinstance(registry, BatchWriting):
        return BatchWriter(
            registry,
            owner,
            on_conflict,
            on_finished,
            backend=backend_name(registry),
            submit_timeout=registry_timeout,
        )
    return QueueWriter(registry, owner, on_conflict, on_finished)
