"""How `RedisRunRegistry` stores a run: each field of its hash as a string.

Times are integer microseconds since the epoch, ``parameters``, ``tags``, ``result`` and
``args`` JSON, booleans ``"1"`` or ``"0"``. A field that is None (and empty ``parameters``
or ``tags``) is absent from the hash. The write scripts take their writes as JSON objects
built here (see `write_spec`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from runtrack._clock import dt_to_us, us_to_dt
from runtrack._models import Run, trusted_run
from runtrack._status import RunStatus
from runtrack.registry._redis_client import pairs as _pairs
from runtrack.registry.base import MUTABLE_FIELDS, TIME_FIELDS, is_int

__all__ = ["decode_fields", "decode_run", "encode_run", "to_json", "write_spec"]

_INT_FIELDS: Final = frozenset({"priority", "attempt", "max_attempts"})
_FLOAT_FIELDS: Final = frozenset({"timeout", "progress"})
_JSON_FIELDS: Final = frozenset({"parameters", "tags", "result", "args"})
#: Stored as "1" or "0"; absent means false.
_BOOL_FIELDS: Final = frozenset({"dead", "requeue_on_interrupt"})
_EMPTY_IS_ABSENT: Final = frozenset({"parameters", "tags"})
#: Run fields that may be None, other than the JSON ones.
_OPTIONAL_FIELDS: Final = (
    "started_at",
    "finished_at",
    "group",
    "timeout",
    "progress",
    "progress_message",
    "error_type",
    "error_message",
    "owner",
    "heartbeat_at",
    "task",
    "idempotency_key",
    "requeued_from",
    "not_before",
)


#: ``value`` as compact JSON, non-ASCII characters as they are.
to_json: Final[Callable[[Any], str]] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":")
).encode


def _time(value: Any) -> str:
    return str(value if is_int(value) else dt_to_us(value))


_ENCODERS: Final[dict[str, Callable[[Any], str]]] = {
    **dict.fromkeys(TIME_FIELDS, _time),
    **dict.fromkeys(_JSON_FIELDS, to_json),
    **dict.fromkeys(_INT_FIELDS, lambda v: str(int(v))),
    **dict.fromkeys(_FLOAT_FIELDS, lambda v: repr(float(v))),
    **dict.fromkeys(_BOOL_FIELDS, lambda v: "1" if v else "0"),
    "status": lambda v: RunStatus(v).value,
}


def _encode(field: str, value: Any) -> str | None:
    """One field as its stored string, or None when the field is absent."""
    if value is None or (not value and field in _EMPTY_IS_ABSENT):
        return None
    encoder = _ENCODERS.get(field)
    return str(value) if encoder is None else encoder(value)


def encode_run(run: Mapping[str, Any]) -> dict[str, str]:
    """A run's fields (`Run.__dict__`, or its stored form, see `stored_run`) as its hash."""
    # Spelled out rather than looped over _encode: it runs for every run inserted.
    fields = {
        "run_id": run["run_id"],
        "name": run["name"],
        "status": RunStatus(run["status"]).value,
        "created_at": _time(run["created_at"]),
        "priority": str(run["priority"]),
        "attempt": str(run["attempt"]),
        "max_attempts": str(run["max_attempts"]),
    }
    if run["parameters"]:
        fields["parameters"] = to_json(run["parameters"])
    if run["tags"]:
        fields["tags"] = to_json(run["tags"])
    if run["result"] is not None:
        fields["result"] = to_json(run["result"])
    if run["args"] is not None:
        fields["args"] = to_json(run["args"])
    if run["dead"]:
        fields["dead"] = "1"
    if run["requeue_on_interrupt"]:
        fields["requeue_on_interrupt"] = "1"
    for field in _OPTIONAL_FIELDS:
        value = run[field]
        if value is not None:
            fields[field] = _ENCODERS.get(field, str)(value)
    return fields


def _encode_changes(changes: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Changes as (fields to set, fields to clear)."""
    unknown = changes.keys() - MUTABLE_FIELDS
    if unknown:
        raise ValueError(f"cannot change {', '.join(sorted(unknown))}")
    to_set: dict[str, str] = {}
    to_clear: list[str] = []
    for field, value in changes.items():
        text = _encode(field, value)
        if text is None:
            to_clear.append(field)
        else:
            to_set[field] = text
    return to_set, to_clear


def write_spec(
    run_id: str,
    *,
    insert: Mapping[str, Any] | None = None,
    to: RunStatus | None = None,
    expect: Iterable[RunStatus] = (),
    changes: Mapping[str, Any] | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """One write for the WRITE script (absent keys, never null: Lua would see a value)."""
    spec: dict[str, Any] = {"id": run_id}
    if insert is not None:
        spec["ins"] = encode_run(insert)
    if to is not None:
        spec["to"] = to.value
        spec["exp"] = [s.value for s in expect]
        if owner is not None:
            spec["own"] = owner
    if changes:
        to_set, to_clear = _encode_changes(changes)
        if to_set:
            spec["set"] = to_set
        if to_clear:
            spec["del"] = to_clear
    return spec


def _us_to_dt(text: str) -> Any:
    return us_to_dt(int(text))


def _is_true(text: str) -> bool:
    return text == "1"


#: How each stored field becomes a `Run` field's value (a hash field not listed is skipped).
_DECODERS: Final[dict[str, Callable[[str], Any]]] = {
    **dict.fromkeys(Run.model_fields, str),
    **dict.fromkeys(TIME_FIELDS, _us_to_dt),
    **dict.fromkeys(_JSON_FIELDS, json.loads),
    **dict.fromkeys(_INT_FIELDS, int),
    **dict.fromkeys(_FLOAT_FIELDS, float),
    **dict.fromkeys(_BOOL_FIELDS, _is_true),
}


def decode_run(reply: Any, *, trusted: bool = False) -> Run:
    """The `Run` a hash reply holds (see `decode_fields`)."""
    return decode_fields(_pairs(reply), trusted=trusted)


def decode_fields(fields: Mapping[str, str], *, trusted: bool = False) -> Run:
    """The `Run` whose hash fields are ``fields``.

    ``trusted``: written by this version's scripts and not validated again (claims decode
    hundreds of runs per call).
    """
    decoders = _DECODERS
    data: dict[str, Any] = {}
    for field, text in fields.items():
        decode = decoders.get(field)
        if decode is not None:
            data[field] = decode(text)
    if trusted:
        data["status"] = RunStatus(data["status"])
        return trusted_run(data)
    return Run.model_validate(data)
