"""Tests for the data runtrack records, its statuses, errors, registry URLs and public names."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

import runtrack
import runtrack.registry
from runtrack import (
    TERMINAL,
    BackgroundTaskManager,
    CommandFailed,
    CommandNotExecutable,
    CommandNotFound,
    DuplicateRunError,
    InMemoryRunRegistry,
    ManagerClosedError,
    NoActiveRunError,
    OutputChunk,
    QueueFullError,
    RegistryConfigError,
    RegistryUnavailableError,
    Retry,
    Run,
    RunEvent,
    RunNotFoundError,
    RunRegistry,
    RunStatus,
    RuntrackError,
    registry_from_url,
)
from runtrack._models import MAX_JSON_DEPTH
from runtrack.registry.base import validate_changes
from runtrack.registry.sql import SQLRunRegistry
from sql_registries import mysql_registry

CEST = timezone(timedelta(hours=2))


def param_id(value: object) -> str:
    """A short, readable test id: long strings by their length, classes by name."""
    if isinstance(value, dict):
        return ",".join(
            f"{k if isinstance(k, str) and len(k) <= 20 else param_id(k)}={param_id(v)}"
            for k, v in value.items()
        )
    if isinstance(value, str) and len(value) > 20:
        return f"{value[0]}*{len(value)}"
    if isinstance(value, type):
        return value.__name__
    return repr(value)


def assert_uuid4(value: str) -> None:
    parsed = uuid.UUID(value)
    assert str(parsed) == value
    assert parsed.version == 4
    assert parsed.variant == uuid.RFC_4122


class TestRunDefaults:
    """A Run built with no arguments is a fresh QUEUED run created now."""

    def test_defaults(self) -> None:
        before = datetime.now(UTC)
        run = Run()
        after = datetime.now(UTC)

        assert_uuid4(run.run_id)
        assert run.status is RunStatus.QUEUED
        assert before <= run.created_at <= after
        assert run.created_at.tzinfo is UTC
        assert (run.name, run.parameters, run.tags, run.group) == ("", {}, {}, None)
        assert (run.priority, run.timeout, run.attempt, run.max_attempts) == (0, None, 1, 1)
        assert (run.started_at, run.finished_at, run.heartbeat_at) == (None, None, None)
        assert (run.progress, run.progress_message, run.result) == (None, None, None)
        assert (run.error_type, run.error_message, run.owner) == (None, None, None)
        assert not run.is_finished
        assert run.duration is None

    def test_fresh_uuid4_every_time(self) -> None:
        # Enough ids to cross several refills of any buffered source of randomness, built
        # both with and without fields that need full validation.
        run_ids = [Run().run_id for _ in range(300)] + [
            Run(parameters={"i": i}).run_id for i in range(300)
        ]

        for run_id in run_ids:
            assert_uuid4(run_id)
        assert len(set(run_ids)) == len(run_ids)

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_forked_child_gets_other_ids(self) -> None:
        # In a subprocess, so that forking cannot copy pytest's threads.
        script = textwrap.dedent(
            """
            import json, os
            from runtrack import Run

            Run()  # draw once, so the parent holds buffered randomness at the fork
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                os.write(write, json.dumps([Run().run_id for _ in range(20)]).encode())
                os._exit(0)
            os.close(write)
            with os.fdopen(read) as pipe:
                child = json.load(pipe)
            os.waitpid(pid, 0)
            print(json.dumps({"parent": [Run().run_id for _ in range(20)], "child": child}))
            """
        )

        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )

        ids = json.loads(proc.stdout)
        assert len(ids["child"]) == 20
        assert not set(ids["parent"]) & set(ids["child"])

    def test_fresh_containers(self) -> None:
        first, second = Run(), Run(name="x")

        assert first.parameters is not second.parameters
        assert first.tags is not second.tags

    def test_status_from_string(self) -> None:
        run = Run(status="running")

        assert run.status is RunStatus.RUNNING
        assert run.model_dump(mode="json")["status"] == "running"

    def test_properties(self) -> None:
        start = datetime(2024, 1, 1, 12, tzinfo=UTC)
        run = Run(
            status=RunStatus.COMPLETED,
            started_at=start,
            finished_at=start + timedelta(seconds=1.5),
        )

        assert run.is_finished
        assert run.duration == 1.5


class TestRunCommonFieldsPath:
    """A Run built from name, run_id, group and priority only is validated all the same."""

    def test_same_as_full_validation(self) -> None:
        fields: dict[str, Any] = {"name": "job", "run_id": "r-1", "group": "g", "priority": 3}
        quick = Run(**fields)
        full = Run.model_validate({**fields, "created_at": quick.created_at})

        assert quick == full
        assert repr(quick) == repr(full)
        assert quick.model_dump_json() == full.model_dump_json()
        assert quick.model_fields_set == set(fields)
        assert Run.model_validate_json(quick.model_dump_json()) == quick

    def test_frozen(self) -> None:
        run = Run(name="job")

        with pytest.raises(ValidationError):
            run.name = "other"  # type: ignore[misc]

    @pytest.mark.parametrize(
        "fields",
        [
            {"run_id": ""},
            {"run_id": "x" * 256},
            {"run_id": 5},
            {"run_id": None},
            {"name": "x" * 256},
            {"name": 3},
            {"name": None},
            {"group": ""},
            {"group": "x" * 256},
            {"group": 1},
            {"priority": "high"},
            {"priority": 1.5},
            {"priority": None},
            {"priority": 2**63},
            {"priority": -(2**63) - 1},
        ],
        ids=param_id,
    )
    def test_rejects(self, fields: dict[str, Any]) -> None:
        with pytest.raises(ValidationError):
            Run(**fields)


class TestRunValidation:
    """Run rejects data that the registries could not store faithfully."""

    @pytest.mark.parametrize("field", ["created_at", "started_at", "finished_at", "heartbeat_at"])
    def test_naive_datetime(self, field: str) -> None:
        with pytest.raises(ValidationError, match=field):
            Run(**{field: datetime(2024, 1, 1, 12)})

    @pytest.mark.parametrize(
        "parameters",
        [
            {"x": object()},
            {"x": {1, 2}},
            {"x": b"bytes"},
            {"x": datetime(2024, 1, 1, tzinfo=UTC)},
            {"x": {"nested": object()}},
            {1: "int key"},
            ["not", "a", "dict"],
        ],
        ids=["object", "set", "bytes", "datetime", "nested", "int-key", "list"],
    )
    def test_non_json_parameters(self, parameters: Any) -> None:
        with pytest.raises(ValidationError, match="parameters"):
            Run(parameters=parameters)

    def test_non_json_result(self) -> None:
        with pytest.raises(ValidationError, match="result"):
            Run(result=object())

    @pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
    def test_nan_and_infinity_are_not_json(self, number: float) -> None:
        # JSON has no such numbers: PostgreSQL and MariaDB would refuse the record.
        with pytest.raises(ValidationError, match="not a JSON number"):
            Run(parameters={"x": [1, {"deep": number}]})
        with pytest.raises(ValidationError, match="not a JSON number"):
            Run(result={"x": number})
        with pytest.raises(ValidationError, match="timeout"):
            Run(timeout=number)
        with pytest.raises(ValidationError, match="not a JSON number"):
            validate_changes({"result": [number]})

    def test_priority_bounds_are_storable(self) -> None:
        assert Run(priority=2**63 - 1).priority == 2**63 - 1
        assert Run(priority=-(2**63), name="x").priority == -(2**63)

    @pytest.mark.parametrize("status", ["done", "QUEUED", "", None])
    def test_unknown_status(self, status: Any) -> None:
        with pytest.raises(ValidationError, match="status"):
            Run(status=status)

    def test_frozen(self) -> None:
        run = Run(parameters={"a": 1})

        with pytest.raises(ValidationError):
            run.status = RunStatus.FAILED  # type: ignore[misc]

        assert run.status is RunStatus.QUEUED

    def test_extra_fields_forbidden(self) -> None:
        with pytest.raises(ValidationError, match="statu"):
            Run(statu="queued")  # type: ignore[call-arg]

    def test_aware_datetimes_normalised_to_utc(self) -> None:
        local = datetime(2024, 6, 1, 14, 30, 0, 7, tzinfo=CEST)

        run = Run(created_at=local, started_at=local, finished_at=local, heartbeat_at=local)

        expected = datetime(2024, 6, 1, 12, 30, 0, 7, tzinfo=UTC)
        for stamp in (run.created_at, run.started_at, run.finished_at, run.heartbeat_at):
            assert stamp == expected
            assert stamp is not None
            assert stamp.utcoffset() == timedelta(0)
        assert run.model_dump(mode="json")["created_at"] == "2024-06-01T12:30:00.000007Z"

    @pytest.mark.parametrize(
        ("fields", "ok"),
        [
            ({"progress": 0.0}, True),
            ({"progress": 1.0}, True),
            ({"progress": -0.01}, False),
            ({"progress": 1.01}, False),
            ({"attempt": 1}, True),
            ({"attempt": 0}, False),
            ({"max_attempts": 0}, False),
            ({"timeout": 0.001}, True),
            ({"timeout": 0}, False),
            ({"timeout": -1}, False),
            ({"run_id": "x"}, True),
            ({"run_id": "x" * 255}, True),
            ({"run_id": "x" * 256}, False),
            ({"run_id": ""}, False),
            ({"name": "x" * 255}, True),
            ({"group": "x" * 255}, True),
            ({"tags": {"k" * 255: "v" * 255}}, True),
            ({"tags": {"k" * 256: "v"}}, False),
            ({"tags": {"k": "v" * 256}}, False),
            ({"tags": {"k": 1}}, False),
        ],
        ids=param_id,
    )
    def test_limits(self, fields: dict[str, Any], ok: bool) -> None:
        if ok:
            assert getattr(Run(**fields), next(iter(fields))) == next(iter(fields.values()))
        else:
            with pytest.raises(ValidationError, match=next(iter(fields))):
                Run(**fields)


#: Text no registry stores: NUL (PostgreSQL refuses it) and surrogates (no UTF-8 form).
UNSTORABLE = {
    "nul": ("a\x00b", "NUL character"),
    "nul-non-ascii": ("zoë\x00", "NUL character"),
    "high-surrogate": ("x\ud800", "lone surrogate"),
    "low-surrogate": ("\udc80y", "lone surrogate"),
    "surrogate-pair-as-two": ("\ud83d\ude00", "lone surrogate"),
}
#: Text that must pass: accents, other scripts, emoji, tabs and newlines, other controls.
STORABLE = ["Zoë", "日本語", "😀", "tab\there", "line\nbreak", "bell\x07", "x" * 255]


def hostile_fields(text: str) -> dict[str, dict[str, Any]]:
    """Run fields holding ``text``, by where: every place a run's text is checked."""
    return {
        "run_id": {"run_id": text},
        "name": {"name": text},
        "group": {"group": text},
        "tag-key": {"tags": {text: "v"}},
        "tag-value": {"tags": {"k": text}},
        "parameter-key": {"parameters": {text: 1}},
        "parameter-value": {"parameters": {"a": text}},
        "nested-parameter-key": {"parameters": {"a": [1, {text: True}]}},
        "nested-parameter-value": {"parameters": {"a": {"b": [None, text]}}},
    }


def nested(depth: int, leaf: Any = 1, kind: type = dict) -> dict[str, Any]:
    """Parameters whose objects (or arrays) nest ``depth`` levels deep, itself included."""
    value: Any = leaf
    for _ in range(depth - 1):
        value = {"a": value} if kind is dict else [value]
    return {"a": value}


class TestRunStorableText:
    """NUL and surrogates are refused when a run is built, with a message that says why."""

    @pytest.mark.parametrize("where", list(hostile_fields("")))
    @pytest.mark.parametrize(("text", "says"), UNSTORABLE.values(), ids=list(UNSTORABLE))
    # {} keeps the fast path of name/run_id/group; timeout= forces full validation.
    @pytest.mark.parametrize("more", [{}, {"timeout": 1.0}], ids=["common", "full"])
    def test_refused(self, where: str, text: str, says: str, more: dict[str, Any]) -> None:
        fields = hostile_fields(text)[where]
        field = next(iter(fields))

        with pytest.raises(ValidationError) as info:
            Run(**fields, **more)

        assert isinstance(info.value, ValueError)
        [error] = info.value.errors()
        assert error["loc"] == (field,)
        message = str(info.value)
        assert says in message
        assert "remove it" in message
        assert field in error["msg"] or "tag" in error["msg"]

    @pytest.mark.parametrize("text", ["a\x00b", "zoë\x00"])
    def test_records_read_back_are_not_checked_again(self, text: str) -> None:
        # Registries read with model_validate: a record that an earlier version stored (NUL
        # on SQLite, MariaDB, Redis) still reads. No store took surrogates.
        for fields in hostile_fields(text).values():
            stored = Run.model_validate({"name": "x", **fields}).model_dump()
            assert Run.model_validate(stored).model_dump() == stored

    def test_the_message_gives_the_path_in_parameters(self) -> None:
        with pytest.raises(ValidationError) as info:
            Run(parameters={"a": {"b": [None, "ok", "bad\x00"]}})

        assert "parameters['a']['b'][2] contains a NUL character" in str(info.value)
        with pytest.raises(ValidationError, match=r"a key of parameters\['a'\] contains"):
            Run(parameters={"a": {"\udcff": 1}})
        with pytest.raises(ValidationError, match="tag key '\\\\x00k' contains"):
            Run(tags={"\x00k": "v"})
        with pytest.raises(ValidationError, match="tag 'k' contains a lone surrogate"):
            Run(tags={"k": "\ud800"})

    @pytest.mark.parametrize("text", STORABLE, ids=param_id)
    @pytest.mark.parametrize("more", [{}, {"timeout": 1.0}], ids=["common", "full"])
    def test_accepted(self, text: str, more: dict[str, Any]) -> None:
        for where, fields in hostile_fields(text).items():
            run = Run(**fields, **more)
            assert getattr(run, next(iter(fields))) == next(iter(fields.values())), where
            assert Run.model_validate_json(run.model_dump_json()) == run

    def test_a_changed_tag_is_checked_too(self) -> None:
        with pytest.raises(ValidationError, match="NUL"):
            validate_changes({"tags": {"k": "\x00"}})

    async def test_submit_refuses_with_the_coroutine_closed(self) -> None:
        started = False

        async def work(value: str) -> str:
            nonlocal started
            started = True
            return value

        async with BackgroundTaskManager() as manager:
            for fields in hostile_fields("\ud800").values():
                with pytest.raises(ValidationError, match="lone surrogate"):
                    await manager.submit(work, "x", **fields)
            assert manager.get_active_task_count() == 0
            assert await manager.registry.list_runs() == []
        assert not started


class TestParameterDepth:
    """Parameters nest at most MAX_JSON_DEPTH levels: MariaDB's JSON columns refuse more."""

    @pytest.mark.parametrize("kind", [dict, list])
    def test_limit(self, kind: type) -> None:
        deepest = nested(MAX_JSON_DEPTH, kind=kind)
        assert Run(parameters=deepest).parameters == deepest
        assert Run(parameters=nested(MAX_JSON_DEPTH - 1, leaf={}, kind=kind)).parameters

        for too_deep in (
            nested(MAX_JSON_DEPTH + 1, kind=kind),
            nested(MAX_JSON_DEPTH, leaf=[], kind=kind),
            nested(200, kind=kind),
        ):
            with pytest.raises(ValidationError) as info:
                Run(parameters=too_deep)
            message = str(info.value)
            assert f"more than {MAX_JSON_DEPTH} levels" in message
            assert "MariaDB" in message
            assert "flatten" in message

    def test_wide_is_fine(self) -> None:
        wide = {f"k{i}": [{"x": i}] * 50 for i in range(100)}
        assert Run(parameters=wide).parameters == wide

    async def test_the_limit_is_mariadbs(self) -> None:
        async with mysql_registry() as registry:
            assert isinstance(registry, SQLRunRegistry)
            async with registry.engine.connect() as conn:
                for kind in (dict, list):
                    for depth, leaf, valid in [
                        (MAX_JSON_DEPTH, 1, 1),
                        (MAX_JSON_DEPTH - 1, [], 1),
                        (MAX_JSON_DEPTH + 1, 1, 0),
                        (MAX_JSON_DEPTH, [], 0),
                    ]:
                        doc = json.dumps(nested(depth, leaf, kind))
                        query = sa.text("SELECT JSON_VALID(:doc)")
                        assert (await conn.execute(query, {"doc": doc})).scalar() == valid


class TestStorableEverywhere:
    """What a Run accepts, every registry stores and gives back unchanged."""

    async def test_round_trip(self, registry: RunRegistry) -> None:
        runs = [
            Run(name="deep", parameters=nested(MAX_JSON_DEPTH)),
            Run(name="deep-list", parameters=nested(MAX_JSON_DEPTH - 1, leaf=[], kind=list)),
        ]
        for i, text in enumerate(STORABLE):
            runs.append(
                Run(
                    run_id=f"{i}-{text}"[:255],
                    name=text,
                    group=text,
                    tags={text: text},
                    parameters={text: [text, {text: text}]},
                )
            )
        for run in runs:
            await registry.add_run(run)

        for run in runs:
            assert await registry.get_run(run.run_id) == run


class TestRunName:
    """A run needs a name: left out, the manager fills it in; an empty one is refused."""

    @pytest.mark.parametrize("more", [{}, {"timeout": 1.0}], ids=["common", "full"])
    def test_empty_name_is_refused(self, more: dict[str, Any]) -> None:
        with pytest.raises(ValidationError) as info:
            Run(name="", **more)

        assert isinstance(info.value, ValueError)
        [error] = info.value.errors()
        assert error["loc"] == ("name",)
        assert "a run needs a name" in error["msg"]
        assert "leave name out" in error["msg"]

    def test_left_out_it_is_filled_in_later(self) -> None:
        assert Run().name == ""
        assert Run(run_id="r1").name == ""

    def test_a_stored_record_with_no_name_still_reads_back(self) -> None:
        # registry.add_run(Run()) stores name=""; registries read with model_validate.
        stored = Run().model_dump()

        assert Run.model_validate(stored).name == ""
        assert Run.model_validate_json(Run().model_dump_json()).name == ""

    async def test_submit_with_an_empty_name_uses_the_functions(self) -> None:
        async def named_work() -> None:
            pass

        async with BackgroundTaskManager() as manager:
            run = await manager.submit(named_work, name="")
            assert run.name.endswith("named_work")


class TestRunJSON:
    """A Run survives a trip through JSON unchanged."""

    def test_round_trip(self) -> None:
        run = Run(
            name="报告 ✓",
            status=RunStatus.FAILED,
            created_at=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=CEST),
            started_at=datetime(2024, 3, 1, tzinfo=UTC),
            finished_at=datetime(2024, 3, 1, 0, 0, 1, tzinfo=UTC),
            parameters={"n": [1, 2.5, None, True, {"deep": "ü"}]},
            tags={"team": "billing"},
            group="exports",
            priority=-1,
            timeout=3.0,
            attempt=2,
            max_attempts=3,
            progress=0.5,
            progress_message="half",
            result={"rows": 3},
            error_type="ValueError",
            error_message="bad",
            owner="host:1",
            heartbeat_at=datetime(2024, 3, 1, 0, 0, 0, 500, tzinfo=UTC),
        )

        dumped = run.model_dump_json()

        assert Run.model_validate_json(dumped) == run
        assert json.loads(dumped)["status"] == "failed"
        assert Run.model_validate(run.model_dump(mode="json")) == run


class TestRunStatus:
    """RunStatus is a str enum whose values are the lower-case names."""

    def test_values(self) -> None:
        assert [s.value for s in RunStatus] == [
            "queued",
            "running",
            "completed",
            "failed",
            "cancelled",
        ]
        for status in RunStatus:
            assert status.value == status.name.lower()
            assert isinstance(status, str)
            assert status == status.value
            assert RunStatus(status.value) is status

    def test_str(self) -> None:
        for status in RunStatus:
            assert str(status) == status.value
            assert f"{status}" == status.value

    def test_is_terminal(self) -> None:
        assert {s for s in RunStatus if s.is_terminal} == {
            RunStatus.COMPLETED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
        }
        assert frozenset(s for s in RunStatus if s.is_terminal) == TERMINAL

    def test_unknown(self) -> None:
        with pytest.raises(ValueError, match="done"):
            RunStatus("done")


class TestOutputChunk:
    """OutputChunk is a numbered, timestamped piece of a run's output."""

    def test_defaults(self) -> None:
        before = datetime.now(UTC)
        chunk = OutputChunk(seq=1, text="hi")

        assert chunk.stream == "stdout"
        assert before <= chunk.at <= datetime.now(UTC)
        assert chunk.at.utcoffset() == timedelta(0)

    @pytest.mark.parametrize(
        "fields",
        [
            {"seq": 0, "text": "x"},
            {"seq": 1},
            {"seq": 1, "text": "x", "stream": ""},
            {"seq": 1, "text": "x", "stream": "s" * 65},
            {"seq": 1, "text": "x", "at": datetime(2024, 1, 1)},
            {"seq": 1, "text": "x", "extra": 1},
        ],
        ids=["seq-0", "no-text", "empty-stream", "long-stream", "naive-at", "extra"],
    )
    def test_rejects(self, fields: dict[str, Any]) -> None:
        with pytest.raises(ValidationError):
            OutputChunk(**fields)

    def test_utc_and_frozen(self) -> None:
        chunk = OutputChunk(seq=2, text="x", at=datetime(2024, 1, 1, 2, tzinfo=CEST))

        assert chunk.at == datetime(2024, 1, 1, 0, tzinfo=UTC)
        assert chunk.at.utcoffset() == timedelta(0)
        with pytest.raises(ValidationError):
            chunk.seq = 3  # type: ignore[misc]
        assert OutputChunk.model_validate_json(chunk.model_dump_json()) == chunk


class TestRetry:
    """Retry validates its settings and computes the delay before each retry."""

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"attempts": 0}, ValueError),
            ({"attempts": -1}, ValueError),
            ({"attempts": 2.0}, ValueError),
            ({"attempts": True}, ValueError),
            ({"backoff": -0.1}, ValueError),
            ({"factor": 0.5}, ValueError),
            ({"on": ()}, TypeError),
            ({"on": (KeyboardInterrupt,)}, TypeError),
            ({"on": ("ValueError",)}, TypeError),
            ({"on": ValueError}, TypeError),
        ],
        ids=param_id,
    )
    def test_rejects(self, kwargs: dict[str, Any], error: type[Exception]) -> None:
        with pytest.raises(error, match=next(iter(kwargs))):
            Retry(**kwargs)

    def test_defaults(self) -> None:
        retry = Retry()

        assert retry.attempts == 3
        assert [retry.delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]

    def test_schedule(self) -> None:
        retry = Retry(attempts=10, backoff=0.5, factor=3, max_backoff=10)

        assert [retry.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10, 10]

    def test_constant(self) -> None:
        retry = Retry(backoff=2, factor=1)

        assert {retry.delay(n) for n in range(1, 20)} == {2}

    def test_zero_backoff(self) -> None:
        assert Retry(backoff=0).delay(5) == 0

    def test_callable_backoff(self) -> None:
        calls: list[int] = []

        def backoff(failed_attempt: int) -> float:
            calls.append(failed_attempt)
            return {1: 0.25, 2: -5.0}.get(failed_attempt, 1000.0)

        retry = Retry(attempts=5, backoff=backoff, max_backoff=60)

        assert [retry.delay(n) for n in (1, 2, 3)] == [0.25, 0.0, 60]
        assert calls == [1, 2, 3]

    def test_should_retry(self) -> None:
        retry = Retry(attempts=3, on=(LookupError, TimeoutError))

        assert retry.should_retry(KeyError("k"), 1)
        assert retry.should_retry(TimeoutError(), 2)
        assert not retry.should_retry(TimeoutError(), 3)
        assert not retry.should_retry(ValueError("v"), 1)

    def test_single_attempt_never_retries(self) -> None:
        assert not Retry(attempts=1).should_retry(Exception(), 1)

    def test_frozen(self) -> None:
        retry = Retry()

        with pytest.raises(dataclasses.FrozenInstanceError):
            retry.attempts = 5  # type: ignore[misc]


class TestRunEvent:
    """RunEvent.as_dict is ready for json.dumps."""

    def test_as_dict(self) -> None:
        at = datetime(2024, 1, 1, 12, 0, 0, 5, tzinfo=UTC)
        event = RunEvent(
            run_id="r1",
            name="job",
            status=RunStatus.FAILED,
            previous=RunStatus.RUNNING,
            at=at,
            attempt=2,
            group="g",
            error_type="ValueError",
            error_message="bad ü",
            duration=1.25,
        )

        data = json.loads(json.dumps(event.as_dict()))

        assert data == {
            "run_id": "r1",
            "name": "job",
            "status": "failed",
            "previous": "running",
            "at": "2024-01-01T12:00:00.000005Z",
            "attempt": 2,
            "group": "g",
            "error_type": "ValueError",
            "error_message": "bad ü",
            "duration": 1.25,
        }
        assert datetime.fromisoformat(data["at"]) == at
        assert set(data) == {f.name for f in dataclasses.fields(RunEvent)}

    def test_new_run(self) -> None:
        event = RunEvent(
            run_id="r1", name="job", status=RunStatus.QUEUED, previous=None, at=datetime.now(UTC)
        )

        data = event.as_dict()

        assert data["status"] == "queued"
        assert data["previous"] is None
        json.dumps(data)

    @pytest.mark.parametrize(
        "at",
        [
            datetime(2024, 1, 1, 12, 0, 0, 5, tzinfo=UTC),
            datetime(2024, 1, 1, 12, tzinfo=UTC),
            datetime(2024, 1, 1, 14, 0, 0, 500000, tzinfo=CEST),
        ],
        ids=["micro", "whole-second", "cest"],
    )
    def test_times_are_written_as_in_a_runs_json(self, at: datetime) -> None:
        # SSE clients get events from as_dict() and runs from pydantic: one format.
        event = RunEvent(run_id="r1", name="job", status=RunStatus.QUEUED, previous=None, at=at)

        written = event.as_dict()["at"]

        assert written == Run(created_at=at).model_dump(mode="json")["created_at"]
        assert written.endswith("Z")
        assert datetime.fromisoformat(written) == at


def all_errors() -> list[RuntrackError]:
    return [
        DuplicateRunError("r-1"),
        DuplicateRunError("r-1", where="manager"),
        RunNotFoundError("r-1"),
        QueueFullError(7),
        ManagerClosedError("closed"),
        NoActiveRunError(),
        RegistryUnavailableError("redis", "timed out after 5 s"),
        RegistryConfigError("mysql", "Unknown database 'app'", "create the database"),
        CommandFailed(3, "disk full"),
        CommandNotFound("pg_dump"),
        CommandNotExecutable("./run.sh"),
    ]


class TestErrors:
    """Every error is a RuntrackError that says what happened and what to do."""

    def test_hierarchy(self) -> None:
        classes = {type(error) for error in all_errors()}

        assert classes == set(RuntrackError.__subclasses__())
        assert issubclass(RuntrackError, Exception)

    @pytest.mark.parametrize(
        ("error", "says"),
        list(
            zip(
                all_errors(),
                [
                    ["'r-1'", "registry", "fresh run_id"],
                    ["'r-1'", "manager"],
                    ["'r-1'", "check the id"],
                    ["max_pending=7", "retry later"],
                    ["closed", "new manager"],
                    ["current_run()", "BackgroundTaskManager"],
                    ["redis", "timed out after 5 s", "retry"],
                    ["mysql", "Unknown database 'app'", "create the database"],
                    ["exited with code 3", "disk full"],
                    ["not found", "'pg_dump'", "PATH"],
                    ["not executable", "'./run.sh'", "chmod +x"],
                ],
                strict=True,
            )
        ),
        ids=[
            "DuplicateRunError",
            "DuplicateRunError-manager",
            "RunNotFoundError",
            "QueueFullError",
            "ManagerClosedError",
            "NoActiveRunError",
            "RegistryUnavailableError",
            "RegistryConfigError",
            "CommandFailed",
            "CommandNotFound",
            "CommandNotExecutable",
        ],
    )
    def test_message(self, error: RuntrackError, says: list[str]) -> None:
        message = str(error)

        for part in says:
            assert part in message

    def test_context(self) -> None:
        assert DuplicateRunError("r-1").run_id == "r-1"
        assert RunNotFoundError("r-1").run_id == "r-1"
        assert QueueFullError(7).max_pending == 7
        assert ManagerClosedError("closing").state == "closing"
        assert RegistryUnavailableError("postgresql").backend == "postgresql"
        assert RegistryConfigError("redis", "bad", "fix").backend == "redis"
        assert CommandFailed(-9, "x").exit_code == -9
        assert CommandFailed(1, "last").last_stderr_line == "last"
        assert CommandNotFound("ls").program == "ls"
        assert CommandNotExecutable("ls").program == "ls"

    @pytest.mark.parametrize("error", all_errors(), ids=lambda e: type(e).__name__)
    def test_pickle(self, error: RuntrackError) -> None:
        # Errors cross process boundaries (process pools, job queues) by pickling.
        copy = pickle.loads(pickle.dumps(error))

        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert vars(copy) == vars(error)


class TestRegistryFromURL:
    """registry_from_url builds a registry, or says which URLs it accepts."""

    @pytest.mark.parametrize("url", ["memory://", "MEMORY://"])
    def test_memory(self, url: str) -> None:
        first, second = registry_from_url(url), registry_from_url(url)

        assert isinstance(first, InMemoryRunRegistry)
        assert first is not second

    @pytest.mark.parametrize(
        "url",
        [
            "foo://x",
            "postgres://admin:s3cret@db.example/app",
            "sqlite:///runs.db",
            "mysql://root:s3cret@localhost/app",
            "",
            "memory",
            "memory:",
            "memory:/",
            "://",
            "not a url",
            "admin:s3cret@db.example/app",
            "memory://[",
            "memory://anything",
            "memory:///",
            "memory://?x=1",
            "redis://admin:s3cret@[::1",
            "redis://admin:s3cret@host/abc",
            "rediss://host:6379/0?db=x",
        ],
        ids=repr,
    )
    def test_bad_url(self, url: str) -> None:
        with pytest.raises(ValueError, match="use one of") as info:
            registry_from_url(url)

        message = str(info.value)
        for form in (
            "memory://",
            "sqlite+aiosqlite:///",
            "postgresql+asyncpg://",
            "mysql+asyncmy://",
            "redis://",
        ):
            assert form in message
        assert "s3cret" not in message

    @pytest.mark.parametrize("url", [None, b"memory://", 1, ["memory://"]], ids=repr)
    def test_not_a_string(self, url: Any) -> None:
        with pytest.raises(TypeError, match="URL"):
            registry_from_url(url)

    def test_prefix(self, tmp_path: Path) -> None:
        from runtrack.registry.redis import RedisRunRegistry
        from runtrack.registry.sql import SQLRunRegistry

        sql = registry_from_url(f"sqlite+aiosqlite:///{tmp_path}/r.db", prefix="app_")
        redis = registry_from_url("redis://127.0.0.1:6379/0", prefix="app:")
        default = registry_from_url(f"sqlite+aiosqlite:///{tmp_path}/r.db")

        assert isinstance(sql, SQLRunRegistry)
        assert sql.table_prefix == "app_"
        assert isinstance(redis, RedisRunRegistry)
        assert redis.prefix == "app:"
        assert isinstance(default, SQLRunRegistry)
        assert default.table_prefix != "app_"

    def test_prefix_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="memory:// takes no prefix"):
            registry_from_url("memory://", prefix="x")
        with pytest.raises(ValueError, match="table_prefix"):
            registry_from_url(f"sqlite+aiosqlite:///{tmp_path}/r.db", prefix="no-dashes")


def isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then others."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[0].isupper() else (2, name)


class TestPublicAPI:
    """The public modules export exactly their public names, in sorted order."""

    @pytest.mark.parametrize("module", [runtrack, runtrack.registry], ids=lambda m: m.__name__)
    def test_all_sorted_and_complete(self, module: ModuleType) -> None:
        exported: list[str] = module.__all__
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, ModuleType)
        }

        assert exported == sorted(exported, key=isort_key)
        assert len(set(exported)) == len(exported)
        assert set(exported) == public
        namespace: dict[str, Any] = {}
        exec(f"from {module.__name__} import *", namespace)
        assert set(exported) <= set(namespace)

    def test_contract_names(self) -> None:
        for name in (
            "BackgroundTaskManager",
            "DuplicateRunError",
            "InMemoryRunRegistry",
            "ManagerClosedError",
            "QueueFullError",
            "RegistryUnavailableError",
            "Retry",
            "Run",
            "RunEvent",
            "RunNotFoundError",
            "RunRegistry",
            "RunStatus",
            "RuntrackError",
            "OutputChunk",
            "current_run",
            "registry_from_url",
            "report_progress",
        ):
            assert name in runtrack.__all__

    def test_import_needs_no_extra(self) -> None:
        script = (
            "import sys, runtrack; "
            "print(sorted(m for m in ('fastapi', 'redis', 'sqlalchemy', 'runtrack.fastapi', "
            "'runtrack.registry.sql', 'runtrack.registry.redis', 'runtrack.cli', 'click', "
            "'uvicorn') if m in sys.modules))"
        )

        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )

        assert proc.stdout.strip() == "[]"


class TestDurableFields:
    """The durable-task fields of `Run` take JSON only, of the right shape."""

    def test_args_shape(self) -> None:
        run = Run(task="t", args={"args": [1], "kwargs": {"a": None}})
        assert run.args == {"args": [1], "kwargs": {"a": None}}
        with pytest.raises(ValidationError, match="only the keys"):
            Run(task="t", args={"args": [], "other": 1})
        with pytest.raises(ValidationError, match="list"):
            Run(task="t", args={"args": {"a": 1}})
        with pytest.raises(ValidationError, match="object"):
            Run(task="t", args={"kwargs": [1]})

    @pytest.mark.parametrize(
        ("args", "match"),
        [
            ({"args": [float("nan")]}, "JSON number"),
            ({"args": ["a\x00b"]}, "NUL"),
            ({"args": [object()]}, "args"),
            ({"kwargs": {"k": "\ud800"}}, "surrogate"),
        ],
        ids=["nan", "nul", "object", "surrogate"],
    )
    def test_args_json_only(self, args: dict[str, Any], match: str) -> None:
        with pytest.raises(ValidationError, match=match):
            Run(task="t", args=args)

    def test_args_depth_bounded(self) -> None:
        deep: Any = []
        for _ in range(40):
            deep = [deep]
        with pytest.raises(ValidationError, match="args nest"):
            Run(task="t", args={"args": deep})

    @pytest.mark.parametrize("field", ["task", "idempotency_key", "requeued_from"])
    def test_ident_fields(self, field: str) -> None:
        with pytest.raises(ValidationError, match=field):
            Run(**{field: "x" * 256})
        with pytest.raises(ValidationError, match="NUL"):
            Run(**{field: "a\x00"})
        with pytest.raises(ValidationError):
            Run(**{field: ""})


def test_trusted_run_equals_a_validated_one() -> None:
    from runtrack._models import trusted_run

    run = Run(name="n", task="t", args={"args": [1], "kwargs": {}}, dead=True, priority=3)
    data = {name: getattr(run, name) for name in Run.model_fields}

    built = trusted_run(data)

    assert built == run
    assert built.model_dump() == run.model_dump()
    assert trusted_run({"run_id": "x", "name": "n"}).tags == {}
