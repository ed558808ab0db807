"""Values a store refuses: find the run and field at fault, and say what to do.

A store refuses some values because of what they hold: PostgreSQL cannot keep a NUL
character in text, no UTF-8 store can keep a lone surrogate (such as U+D800), MariaDB
checks that JSON nests at most 31 arrays or objects deep. The registries raise a
`ValueError` for such a write, built here; they look for the culprit only once the store
has refused a write, so writes that succeed pay nothing for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from runtrack._models import Run
from runtrack.registry.base import RunWrite

__all__ = [
    "Candidates",
    "candidates_of_changes",
    "candidates_of_output",
    "candidates_of_run",
    "candidates_of_writes",
    "oversized",
    "refused",
]

#: ``(run_id, field, value)`` triples: the values a write sends.
Candidates = Iterable[tuple[str, str, object]]

#: The text fields of a run, and the JSON ones, in the order they are searched.
_FIELDS: Final = (
    "run_id",
    "name",
    "group",
    "tags",
    "parameters",
    "result",
    "error_type",
    "error_message",
    "progress_message",
    "owner",
    "task",
    "args",
    "idempotency_key",
    "requeued_from",
)

_NUL_FIX: Final = "remove or escape the NUL characters before they reach the registry"
_SURROGATE_FIX: Final = (
    "text must be valid Unicode: decode bytes with errors='replace' or 'backslashreplace'"
)
_DEPTH_FIX: Final = "flatten the value, or store it as a JSON string (json.dumps)"


def candidates_of_run(run: Run) -> Candidates:
    """The values `RunRegistry.add_run` sends for ``run``."""
    return ((run.run_id, field, getattr(run, field)) for field in _FIELDS)


def candidates_of_changes(run_id: str, changes: Mapping[str, Any]) -> Candidates:
    """The values a `transition` or `update_run` of ``run_id`` sends."""
    return ((run_id, field, value) for field, value in changes.items())


def candidates_of_output(run_id: str, items: Iterable[tuple[str, str]]) -> Candidates:
    """The values an `append_output` of ``run_id`` sends."""
    for stream, text in items:
        yield run_id, "output stream name", stream
        yield run_id, "output", text


def candidates_of_writes(writes: Iterable[RunWrite]) -> Candidates:
    """The values a `write_batch` sends."""
    for write in writes:
        record = write.record()
        if record is not None:
            yield from ((write.run_id, f, record.get(f)) for f in _FIELDS)
        yield from candidates_of_changes(write.run_id, write.changes)


def _problem(value: object, *, nul: bool, max_depth: int | None) -> tuple[str, str] | None:
    """What in ``value`` a store may refuse, and what to do about it; None if nothing."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if nul and "\x00" in item:
                return "holds a NUL character (\\x00)", _NUL_FIX
            try:
                item.encode()
            except UnicodeEncodeError as exc:
                char = item[exc.start]
                return f"holds a lone surrogate ({char!r}), which is not valid Unicode", (
                    _SURROGATE_FIX
                )
        elif isinstance(item, Mapping | list | tuple):
            depth += 1
            if max_depth is not None and depth > max_depth:
                return (
                    f"is JSON nested over {max_depth} arrays or objects deep",
                    f"the store accepts at most {max_depth} levels: {_DEPTH_FIX}",
                )
            if isinstance(item, Mapping):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth) for child in item.values())
            else:
                stack.extend((child, depth) for child in item)
    return None


def _where(run_id: str, field: str) -> str:
    what = "the output" if field == "output" else f"the {field}"
    return f"{what} of run {run_id!r}"


def refused(
    backend: str,
    candidates: Candidates | None,
    *,
    detail: str = "",
    nul: bool = False,
    max_depth: int | None = None,
) -> ValueError:
    """The `ValueError` for a write ``backend`` refused because of what it holds.

    Args:
        backend: The store's name, as errors give it.
        candidates: The values the write sent; the first one with a problem is named.
        detail: What the store said, for when no culprit is found.
        nul: Whether the store refuses NUL characters.
        max_depth: How many nested arrays or objects the store accepts, if limited.
    """
    for run_id, field, value in _iter(candidates):
        problem = _problem(value, nul=nul, max_depth=max_depth)
        if problem is not None:
            what, fix = problem
            return ValueError(
                f"the {backend} registry cannot store {_where(run_id, field)}: it {what}; {fix}"
            )
    said = f" ({detail})" if detail else ""
    return ValueError(
        f"the {backend} registry refused a value of this write{said}: check the values "
        "of the run (text must be valid Unicode; no NUL characters on PostgreSQL)"
    )


def oversized(
    backend: str, candidates: Candidates | None, limit: int, setting: str
) -> ValueError | None:
    """The `ValueError` for a run whose values take more than ``limit`` bytes, or None.

    Args:
        backend: The store's name, as errors give it.
        candidates: The values the write sent.
        limit: The most bytes one statement may hold.
        setting: The server setting that sets ``limit``.
    """
    sizes: dict[str, int] = {}
    largest: dict[str, tuple[int, str]] = {}
    for run_id, field, value in _iter(candidates):
        size = _size(value)
        sizes[run_id] = sizes.get(run_id, 0) + size
        if size > largest.get(run_id, (-1, ""))[0]:
            largest[run_id] = (size, field)
    for run_id, total in sizes.items():
        if total > limit:
            field = largest[run_id][1]
            return ValueError(
                f"the {backend} registry cannot store {_where(run_id, field)}: the run's "
                f"values take {_mb(total)}, over the server's {setting} of {_mb(limit)}; "
                f"store less (keep large data elsewhere and store a reference), or raise "
                f"{setting}"
            )
    return None


def _iter(candidates: Candidates | None) -> Iterator[tuple[str, str, object]]:
    return iter(()) if candidates is None else iter(candidates)


#: Bytes the MySQL text protocol escapes with a backslash, each doubling in size.
_ESCAPED: Final = (b"\\", b"\x00", b"\n", b"\r", b"'", b'"', b"\x1a")


def _size(value: object) -> int:
    """About how many bytes ``value`` takes in a statement (JSON for containers)."""
    if value is None or isinstance(value, bool | int | float):
        return 8
    if not isinstance(value, str):
        value = json.dumps(value, default=str)
    data = value.encode("utf-8", "surrogatepass")
    return len(data) + sum(data.count(byte) for byte in _ESCAPED)


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"
