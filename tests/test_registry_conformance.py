"""The conformance suite: every `RunRegistry` backend passes this module unchanged.

The ``registry`` fixture (``conftest.py``) runs each test once per backend listed in
``tests/registries.py``. Tests use the public API only, and build runs with explicit
timestamps wherever an order or an age matters.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from runtrack import (
    TERMINAL,
    DuplicateRunError,
    OutputChunk,
    OutputTrimming,
    Run,
    RunNotFoundError,
    RunRegistry,
    RunStatus,
)

Q, R, C, F, X = (
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
)

#: The legal transitions, written out from the design contract (not from runtrack's table).
LEGAL: frozenset[tuple[RunStatus, RunStatus]] = frozenset(
    {(Q, R), (Q, X), (R, C), (R, F), (R, X), (R, Q)}
)
ILLEGAL = sorted(set(itertools.product(RunStatus, RunStatus)) - LEGAL)

#: A fixed instant: runs that must sort get ``created_at=T0 + n seconds``.
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)

#: Fields that neither ``transition`` nor ``update_run`` may set.
IMMUTABLE = [
    "status",
    "created_at",
    "name",
    "parameters",
    "group",
    "task",
    "args",
    "idempotency_key",
    "requeued_from",
    "requeue_on_interrupt",
    "not_before",
    "bogus",
]


def pair_id(pair: tuple[RunStatus, RunStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def ago(**delta: float) -> datetime:
    """Now (UTC) minus a timedelta given as keyword arguments."""
    return datetime.now(UTC) - timedelta(**delta)


async def add(registry: RunRegistry, **fields: Any) -> Run:
    """Add a `Run` built from ``fields`` and return it."""
    run = Run(**fields)
    await registry.add_run(run)
    return run


async def status_of(registry: RunRegistry, run_id: str) -> RunStatus:
    run = await registry.get_run(run_id)
    assert run is not None
    return run.status


def ids(runs: list[Run]) -> list[str]:
    return [run.run_id for run in runs]


class TestAddAndGet:
    """add_run inserts a run and get_run returns it exactly as given."""

    async def test_get_unknown_is_none(self, registry: RunRegistry) -> None:
        assert await registry.get_run("no-such-run") is None

    async def test_round_trip_defaults(self, registry: RunRegistry) -> None:
        run = await add(registry)

        assert await registry.get_run(run.run_id) == run

    async def test_round_trip_every_field(self, registry: RunRegistry) -> None:
        ist = timezone(timedelta(hours=5, minutes=30))
        run = Run(
            run_id="run-ü-1",
            name="报告.build ✓",
            status=RunStatus.FAILED,
            created_at=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
            started_at=datetime(2024, 3, 1, 5, 30, 0, 1, tzinfo=ist),
            finished_at=datetime(2024, 3, 1, 1, 0, 0, 500000, tzinfo=UTC),
            parameters={
                "user": 42,
                "ratio": 0.1,
                "neg": -7,
                "flag": True,
                "off": False,
                "nothing": None,
                "text": "naïve café 🚀 \"quoted\" 'single' \\ back",
                "nested": {"list": [1, "two", [3.5, {"deep": None}]], "empty": {}, "none": []},
            },
            tags={"team": "billing", "équipe": "façade 🚀", "empty": ""},
            group="exports",
            priority=-3,
            timeout=12.5,
            attempt=2,
            max_attempts=5,
            progress=0.25,
            progress_message="step 1/4 — ok",
            result={"rows": [1, 2, 3], "ok": True, "note": "done ✓"},
            error_type="ValueError",
            error_message="bad value: ü",
            owner="host-1:1234",
            heartbeat_at=datetime(2024, 3, 1, 0, 59, 0, 7, tzinfo=UTC),
        )
        await registry.add_run(run)

        got = await registry.get_run(run.run_id)

        assert got == run
        assert got.model_dump() == run.model_dump()
        for stamp in (got.created_at, got.started_at, got.finished_at, got.heartbeat_at):
            assert stamp is not None
            assert stamp.utcoffset() == timedelta(0)
        assert got.started_at == datetime(2024, 3, 1, 0, 0, 0, 1, tzinfo=UTC)
        assert isinstance(got.status, RunStatus)
        assert got.parameters["flag"] is True
        assert got.parameters["user"] == 42
        assert type(got.parameters["user"]) is int
        assert type(got.parameters["ratio"]) is float

    @pytest.mark.parametrize("result", [None, 0, "text", [1, 2], {"a": {"b": [None]}}, 1.5])
    async def test_round_trip_result(self, registry: RunRegistry, result: Any) -> None:
        run = await add(registry, status=RunStatus.COMPLETED, result=result)

        got = await registry.get_run(run.run_id)

        assert got is not None
        assert got.result == result
        assert type(got.result) is type(result)

    async def test_duplicate_id(self, registry: RunRegistry) -> None:
        first = await add(registry, run_id="dup", name="first")

        with pytest.raises(DuplicateRunError) as info:
            await registry.add_run(Run(run_id="dup", name="second"))

        assert info.value.run_id == "dup"
        assert await registry.get_run("dup") == first

    @pytest.mark.parametrize("not_a_run", [None, {"run_id": "x"}, "x"])
    async def test_add_non_run(self, registry: RunRegistry, not_a_run: Any) -> None:
        with pytest.raises(TypeError):
            await registry.add_run(not_a_run)

    async def test_returned_run_is_a_copy(self, registry: RunRegistry) -> None:
        run = await add(registry, parameters={"nested": {"n": 1}}, tags={"k": "v"})

        got = await registry.get_run(run.run_id)
        assert got is not None
        nested = got.parameters["nested"]
        assert isinstance(nested, dict)
        nested["n"] = 2
        got.parameters["added"] = True
        got.tags["k"] = "changed"

        assert await registry.get_run(run.run_id) == Run(
            run_id=run.run_id,
            created_at=run.created_at,
            parameters={"nested": {"n": 1}},
            tags={"k": "v"},
        )

    async def test_stored_run_is_a_copy(self, registry: RunRegistry) -> None:
        run = await add(registry, parameters={"nested": {"n": 1}}, result=None)

        nested = run.parameters["nested"]
        assert isinstance(nested, dict)
        nested["n"] = 2

        got = await registry.get_run(run.run_id)
        assert got is not None
        assert got.parameters == {"nested": {"n": 1}}


class TestTransition:
    """transition is a compare-and-set on the status, with the changes in the same write."""

    @pytest.mark.parametrize("pair", sorted(LEGAL), ids=pair_id)
    async def test_legal_applies(
        self, registry: RunRegistry, pair: tuple[RunStatus, RunStatus]
    ) -> None:
        source, target = pair
        run = await add(registry, status=source)

        updated = await registry.transition(run.run_id, target)

        assert updated is not None
        assert updated.status is target
        assert updated == run.model_copy(update={"status": target})
        assert await registry.get_run(run.run_id) == updated

    @pytest.mark.parametrize("pair", sorted(LEGAL), ids=pair_id)
    async def test_legal_with_explicit_expect(
        self, registry: RunRegistry, pair: tuple[RunStatus, RunStatus]
    ) -> None:
        source, target = pair
        run = await add(registry, status=source)

        updated = await registry.transition(run.run_id, target.value, expect=source.value)

        assert updated is not None
        assert updated.status is target

    @pytest.mark.parametrize("pair", ILLEGAL, ids=pair_id)
    async def test_illegal_expect_raises(
        self, registry: RunRegistry, pair: tuple[RunStatus, RunStatus]
    ) -> None:
        source, target = pair
        run = await add(registry, status=source)

        with pytest.raises(ValueError, match=target.value):
            await registry.transition(run.run_id, target, expect=source)

        assert await registry.get_run(run.run_id) == run

    @pytest.mark.parametrize("pair", ILLEGAL, ids=pair_id)
    async def test_illegal_by_default_does_nothing(
        self, registry: RunRegistry, pair: tuple[RunStatus, RunStatus]
    ) -> None:
        source, target = pair
        run = await add(registry, status=source)

        assert await registry.transition(run.run_id, target, error_message="nope") is None
        assert await registry.get_run(run.run_id) == run

    async def test_illegal_among_legal_expect_raises(self, registry: RunRegistry) -> None:
        run = await add(registry, status=RunStatus.RUNNING)

        with pytest.raises(ValueError, match="illegal"):
            await registry.transition(
                run.run_id, RunStatus.FAILED, expect=[RunStatus.RUNNING, RunStatus.QUEUED]
            )

        assert await status_of(registry, run.run_id) is RunStatus.RUNNING

    @pytest.mark.parametrize("terminal", sorted(TERMINAL))
    async def test_terminal_never_overwritten(
        self, registry: RunRegistry, terminal: RunStatus
    ) -> None:
        run = await add(registry, status=terminal)

        for target in RunStatus:
            assert await registry.transition(run.run_id, target) is None

        assert await registry.get_run(run.run_id) == run

    async def test_expect_narrows(self, registry: RunRegistry) -> None:
        running = await add(registry, status=RunStatus.RUNNING)
        queued = await add(registry, status=RunStatus.QUEUED)

        assert (
            await registry.transition(running.run_id, RunStatus.CANCELLED, expect=RunStatus.QUEUED)
            is None
        )
        cancelled = await registry.transition(
            queued.run_id, RunStatus.CANCELLED, expect=RunStatus.QUEUED
        )

        assert await status_of(registry, running.run_id) is RunStatus.RUNNING
        assert cancelled is not None
        assert cancelled.status is RunStatus.CANCELLED

    @pytest.mark.parametrize(
        "expect",
        [
            [RunStatus.QUEUED, RunStatus.RUNNING],
            ("queued", "running"),
            frozenset({RunStatus.RUNNING}),
            "running",
        ],
        ids=["list", "tuple-of-str", "frozenset", "str"],
    )
    async def test_expect_forms(self, registry: RunRegistry, expect: Any) -> None:
        run = await add(registry, status=RunStatus.RUNNING)

        updated = await registry.transition(run.run_id, "cancelled", expect=expect)

        assert updated is not None
        assert updated.status is RunStatus.CANCELLED

    async def test_empty_expect_never_applies(self, registry: RunRegistry) -> None:
        run = await add(registry, status=RunStatus.RUNNING)

        assert await registry.transition(run.run_id, RunStatus.COMPLETED, expect=[]) is None
        assert await status_of(registry, run.run_id) is RunStatus.RUNNING

    async def test_unknown_run_is_none(self, registry: RunRegistry) -> None:
        assert await registry.transition("no-such-run", RunStatus.RUNNING) is None
        assert await registry.get_run("no-such-run") is None

    @pytest.mark.parametrize("bad", ["done", "QUEUED ", ""])
    async def test_unknown_status_raises(self, registry: RunRegistry, bad: str) -> None:
        run = await add(registry)

        with pytest.raises(ValueError, match="queued"):
            await registry.transition(run.run_id, bad)
        with pytest.raises(ValueError, match="queued"):
            await registry.transition(run.run_id, RunStatus.RUNNING, expect=bad)

        assert await registry.get_run(run.run_id) == run

    async def test_changes_applied(self, registry: RunRegistry) -> None:
        run = await add(registry, tags={"a": "1"})
        cest = timezone(timedelta(hours=2))
        started = datetime(2024, 6, 1, 14, 0, 0, 42, tzinfo=cest)

        updated = await registry.transition(
            run.run_id,
            RunStatus.RUNNING,
            started_at=started,
            heartbeat_at=started,
            owner="manager-1",
            attempt=2,
            max_attempts=3,
            priority=9,
            timeout=1.5,
            progress=0.0,
            progress_message="starting",
            tags={"a": "2", "b": "ü"},
        )

        assert updated is not None
        assert updated == run.model_copy(
            update={
                "status": RunStatus.RUNNING,
                "started_at": datetime(2024, 6, 1, 12, 0, 0, 42, tzinfo=UTC),
                "heartbeat_at": datetime(2024, 6, 1, 12, 0, 0, 42, tzinfo=UTC),
                "owner": "manager-1",
                "attempt": 2,
                "max_attempts": 3,
                "priority": 9,
                "timeout": 1.5,
                "progress": 0.0,
                "progress_message": "starting",
                "tags": {"a": "2", "b": "ü"},
            }
        )
        assert updated.started_at is not None
        assert updated.started_at.utcoffset() == timedelta(0)
        assert await registry.get_run(run.run_id) == updated

    async def test_finish_records_outcome(self, registry: RunRegistry) -> None:
        run = await add(registry, status=RunStatus.RUNNING, started_at=at(0))

        failed = await registry.transition(
            run.run_id,
            RunStatus.FAILED,
            finished_at=at(2.5),
            error_type="TimeoutError",
            error_message="took longer than 2.5 s",
            result={"partial": [1, None]},
        )

        assert failed is not None
        assert failed.finished_at == at(2.5)
        assert failed.duration == 2.5
        assert failed.is_finished
        assert (failed.error_type, failed.error_message) == (
            "TimeoutError",
            "took longer than 2.5 s",
        )
        assert failed.result == {"partial": [1, None]}
        assert await registry.get_run(run.run_id) == failed

    async def test_changes_to_none_clear_fields(self, registry: RunRegistry) -> None:
        run = await add(
            registry,
            status=RunStatus.RUNNING,
            started_at=at(0),
            progress=0.5,
            owner="manager-1",
        )

        requeued = await registry.transition(
            run.run_id, RunStatus.QUEUED, started_at=None, progress=None, owner=None, attempt=2
        )

        assert requeued is not None
        assert (requeued.started_at, requeued.progress, requeued.owner) == (None, None, None)
        assert requeued.attempt == 2
        assert await registry.get_run(run.run_id) == requeued

    async def test_changes_not_applied_when_status_does_not_match(
        self, registry: RunRegistry
    ) -> None:
        run = await add(registry, status=RunStatus.COMPLETED, result=1)

        assert await registry.transition(run.run_id, RunStatus.FAILED, result=2) is None
        assert await registry.get_run(run.run_id) == run

    @pytest.mark.parametrize("field", IMMUTABLE)
    async def test_immutable_field_raises(self, registry: RunRegistry, field: str) -> None:
        run = await add(registry)
        value: Any = {"status": "running", "created_at": at(1), "not_before": at(1)}.get(field, "x")

        with pytest.raises(ValueError, match=field):
            await registry.transition(run.run_id, RunStatus.RUNNING, **{field: value})

        assert await registry.get_run(run.run_id) == run

    async def test_run_id_cannot_change(self, registry: RunRegistry) -> None:
        run = await add(registry)
        changes: dict[str, Any] = {"run_id": "other"}

        with pytest.raises((TypeError, ValueError)):
            await registry.transition(run.run_id, RunStatus.RUNNING, **changes)

        assert await registry.get_run(run.run_id) == run
        assert await registry.get_run("other") is None

    @pytest.mark.parametrize(
        "changes",
        [
            {"progress": 1.5},
            {"progress": -0.1},
            {"attempt": 0},
            {"max_attempts": 0},
            {"timeout": 0},
            {"started_at": datetime(2024, 1, 1)},  # naive
            {"started_at": "not a date"},
            {"result": object()},
            {"tags": {"k": 1}},
            {"priority": "high"},
        ],
        ids=lambda changes: next(iter(changes)),
    )
    async def test_bad_value_raises(self, registry: RunRegistry, changes: dict[str, Any]) -> None:
        run = await add(registry)

        with pytest.raises(ValidationError):
            await registry.transition(run.run_id, RunStatus.RUNNING, **changes)

        assert await registry.get_run(run.run_id) == run


class TestTransitionRaces:
    """Concurrent transitions of one run: exactly one wins, and its write is the one kept."""

    N = 50

    async def test_finish_race_has_one_winner(self, registry: RunRegistry) -> None:
        run = await add(registry, status=RunStatus.RUNNING)
        targets = [(C, F, X)[i % 3] for i in range(self.N)]

        results = await asyncio.gather(
            *(
                registry.transition(run.run_id, to, error_message=f"writer {i}")
                for i, to in enumerate(targets)
            )
        )

        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        (winner,) = winners
        index = results.index(winner)
        assert winner.status is targets[index]
        assert winner.error_message == f"writer {index}"
        assert await registry.get_run(run.run_id) == winner

    async def test_start_race_has_one_winner(self, registry: RunRegistry) -> None:
        run = await add(registry)

        results = await asyncio.gather(
            *(
                registry.transition(run.run_id, RunStatus.RUNNING, owner=f"manager-{i}")
                for i in range(self.N)
            )
        )

        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        (winner,) = winners
        assert winner.owner == f"manager-{results.index(winner)}"
        assert await registry.get_run(run.run_id) == winner

    async def test_start_and_cancel_race(self, registry: RunRegistry) -> None:
        run = await add(registry)

        results = await asyncio.gather(
            *(
                registry.transition(run.run_id, (R, X)[i % 2], expect=RunStatus.QUEUED)
                for i in range(self.N)
            )
        )

        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await status_of(registry, run.run_id) is winners[0].status


class TestUpdateRun:
    """update_run sets non-status fields of an existing run."""

    async def test_updates_and_returns(self, registry: RunRegistry) -> None:
        run = await add(registry, status=RunStatus.RUNNING, tags={"a": "1"})
        beat = datetime(2024, 6, 1, 9, 0, 0, 5, tzinfo=timezone(timedelta(hours=-4)))

        updated = await registry.update_run(
            run.run_id,
            progress=0.75,
            progress_message="3/4",
            heartbeat_at=beat,
            tags={"b": "2"},
        )

        assert updated == run.model_copy(
            update={
                "progress": 0.75,
                "progress_message": "3/4",
                "heartbeat_at": datetime(2024, 6, 1, 13, 0, 0, 5, tzinfo=UTC),
                "tags": {"b": "2"},
            }
        )
        assert await registry.get_run(run.run_id) == updated

    async def test_no_changes(self, registry: RunRegistry) -> None:
        run = await add(registry)

        assert await registry.update_run(run.run_id) == run
        assert await registry.get_run(run.run_id) == run

    async def test_unknown_run(self, registry: RunRegistry) -> None:
        with pytest.raises(RunNotFoundError) as info:
            await registry.update_run("no-such-run", progress=0.5)

        assert info.value.run_id == "no-such-run"
        assert await registry.get_run("no-such-run") is None

    async def test_cannot_change_status(self, registry: RunRegistry) -> None:
        run = await add(registry)

        with pytest.raises(ValueError, match=r"transition\(\)"):
            await registry.update_run(run.run_id, status=RunStatus.CANCELLED)

        assert await registry.get_run(run.run_id) == run

    @pytest.mark.parametrize("field", IMMUTABLE)
    async def test_immutable_field_raises(self, registry: RunRegistry, field: str) -> None:
        run = await add(registry)
        value: Any = {"status": "running", "created_at": at(1), "not_before": at(1)}.get(field, "x")

        with pytest.raises(ValueError, match=field):
            await registry.update_run(run.run_id, **{field: value})

        assert await registry.get_run(run.run_id) == run

    async def test_run_id_cannot_change(self, registry: RunRegistry) -> None:
        run = await add(registry)
        changes: dict[str, Any] = {"run_id": "other"}

        with pytest.raises((TypeError, ValueError)):
            await registry.update_run(run.run_id, **changes)

        assert await registry.get_run("other") is None

    @pytest.mark.parametrize(
        "changes",
        [{"progress": 2}, {"heartbeat_at": datetime(2024, 1, 1)}, {"attempt": -1}],
        ids=lambda changes: next(iter(changes)),
    )
    async def test_bad_value_raises(self, registry: RunRegistry, changes: dict[str, Any]) -> None:
        run = await add(registry)

        with pytest.raises(ValidationError):
            await registry.update_run(run.run_id, **changes)

        assert await registry.get_run(run.run_id) == run

    async def test_terminal_run_keeps_status(self, registry: RunRegistry) -> None:
        run = await add(registry, status=RunStatus.COMPLETED)

        updated = await registry.update_run(run.run_id, result={"late": True})

        assert updated.status is RunStatus.COMPLETED
        assert await status_of(registry, run.run_id) is RunStatus.COMPLETED


class TestListRuns:
    """list_runs filters, pages and orders runs newest first by created_at."""

    @pytest.fixture
    def runs(self) -> list[Run]:
        """Seven runs with distinct created_at, in an order unlike their age."""
        spec = [
            (3, "export", "exports", RunStatus.QUEUED, {"team": "a", "env": "prod"}),
            (1, "export", "exports", RunStatus.RUNNING, {"team": "a"}),
            (6, "report", None, RunStatus.COMPLETED, {"team": "b", "env": "prod"}),
            (0, "report", "reports", RunStatus.FAILED, {}),
            (5, "export", None, RunStatus.CANCELLED, {"team": "a", "env": "dev"}),
            (2, "report", "reports", RunStatus.RUNNING, {"team": "b"}),
            (4, "export", "exports", RunStatus.COMPLETED, {"team": "a", "env": "prod"}),
        ]
        return [
            Run(run_id=f"run-{t}", name=n, group=g, status=s, tags=tags, created_at=at(t))
            for t, n, g, s, tags in spec
        ]

    @pytest.fixture
    async def stored(self, registry: RunRegistry, runs: list[Run]) -> list[Run]:
        """The runs, added in the fixture's order; returned newest first."""
        for run in runs:
            await registry.add_run(run)
        return sorted(runs, key=lambda r: r.created_at, reverse=True)

    async def test_empty(self, registry: RunRegistry) -> None:
        assert await registry.list_runs() == []

    async def test_newest_first(self, registry: RunRegistry, stored: list[Run]) -> None:
        assert await registry.list_runs() == stored
        assert ids(stored) == [f"run-{t}" for t in range(6, -1, -1)]

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (RunStatus.RUNNING, [2, 1]),
            ("running", [2, 1]),
            ([RunStatus.QUEUED, "completed"], [6, 4, 3]),
            (("failed", "cancelled"), [5, 0]),
            (frozenset({RunStatus.COMPLETED}), [6, 4]),
            (TERMINAL, [6, 5, 4, 0]),
            ([], []),
        ],
        ids=["enum", "str", "mixed-list", "str-tuple", "frozenset", "terminal", "none"],
    )
    async def test_status(
        self, registry: RunRegistry, stored: list[Run], status: Any, expected: list[int]
    ) -> None:
        assert ids(await registry.list_runs(status=status)) == [f"run-{t}" for t in expected]

    async def test_unknown_status(self, registry: RunRegistry, stored: list[Run]) -> None:
        with pytest.raises(ValueError, match="done"):
            await registry.list_runs(status="done")
        with pytest.raises(ValueError, match="done"):
            await registry.list_runs(status=["queued", "done"])

    async def test_name(self, registry: RunRegistry, stored: list[Run]) -> None:
        assert ids(await registry.list_runs(name="report")) == ["run-6", "run-2", "run-0"]
        assert await registry.list_runs(name="nothing") == []

    async def test_group(self, registry: RunRegistry, stored: list[Run]) -> None:
        assert ids(await registry.list_runs(group="exports")) == ["run-4", "run-3", "run-1"]
        assert await registry.list_runs(group="nothing") == []

    @pytest.mark.parametrize(
        ("tags", "expected"),
        [
            ({"team": "a"}, [5, 4, 3, 1]),
            ({"team": "a", "env": "prod"}, [4, 3]),
            ({"env": "prod"}, [6, 4, 3]),
            ({"team": "b", "env": "dev"}, []),
            ({"team": "c"}, []),
            ({}, [6, 5, 4, 3, 2, 1, 0]),
        ],
        ids=["one-pair", "two-pairs", "other-key", "no-run-has-both", "no-match", "empty"],
    )
    async def test_tags_all_pairs_match(
        self,
        registry: RunRegistry,
        stored: list[Run],
        tags: dict[str, str],
        expected: list[int],
    ) -> None:
        assert ids(await registry.list_runs(tags=tags)) == [f"run-{t}" for t in expected]

    async def test_filters_combine(self, registry: RunRegistry, stored: list[Run]) -> None:
        runs = await registry.list_runs(
            status=["queued", "completed"], name="export", group="exports", tags={"env": "prod"}
        )

        assert ids(runs) == ["run-4", "run-3"]

    async def test_paging(self, registry: RunRegistry, stored: list[Run]) -> None:
        pages = [await registry.list_runs(limit=3, offset=offset) for offset in (0, 3, 6, 9)]

        assert [ids(page) for page in pages] == [
            ["run-6", "run-5", "run-4"],
            ["run-3", "run-2", "run-1"],
            ["run-0"],
            [],
        ]

    async def test_paging_after_filter(self, registry: RunRegistry, stored: list[Run]) -> None:
        page = await registry.list_runs(name="export", limit=2, offset=1)

        assert ids(page) == ["run-4", "run-3"]

    async def test_default_limit_is_100(self, registry: RunRegistry) -> None:
        for i in range(101):
            await registry.add_run(Run(run_id=f"run-{i:03}", created_at=at(i)))

        runs = await registry.list_runs()

        assert len(runs) == 100
        assert runs[0].run_id == "run-100"
        assert runs[-1].run_id == "run-001"

    @pytest.mark.parametrize(
        "args",
        [{"limit": 0}, {"limit": -1}, {"offset": -1}],
        ids=["limit-0", "limit-negative", "offset-negative"],
    )
    async def test_bad_paging(self, registry: RunRegistry, args: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match=next(iter(args))):
            await registry.list_runs(**args)

    async def test_returns_current_state(self, registry: RunRegistry, stored: list[Run]) -> None:
        await registry.transition("run-3", RunStatus.CANCELLED, error_message="stopped")

        (run,) = await registry.list_runs(status="cancelled", name="export", group="exports")

        assert run.run_id == "run-3"
        assert run.error_message == "stopped"


class TestDurableFields:
    """The fields of durable runs round-trip, filter, and ``dead`` can change."""

    async def test_round_trip(self, registry: RunRegistry) -> None:
        run = await add(
            registry,
            run_id="durable-1",
            name="send",
            task="mail.send",
            args={"args": [1, "ü", [2.5, None]], "kwargs": {"to": "a@b", "n": {"deep": True}}},
            idempotency_key="key-✓",
            dead=True,
            requeued_from="durable-0",
            requeue_on_interrupt=True,
            status=RunStatus.FAILED,
            not_before=at(7.5),
        )

        got = await registry.get_run(run.run_id)

        assert got == run
        assert got is not None
        assert got.not_before == at(7.5)
        assert got is not None
        assert got.args == {
            "args": [1, "ü", [2.5, None]],
            "kwargs": {"to": "a@b", "n": {"deep": True}},
        }
        assert got.dead is True
        assert got.requeue_on_interrupt is True

    async def test_defaults(self, registry: RunRegistry) -> None:
        run = await add(registry)

        got = await registry.get_run(run.run_id)

        assert got is not None
        assert (got.task, got.args, got.idempotency_key, got.requeued_from) == (None,) * 4
        assert got.not_before is None
        assert got.dead is False
        assert got.requeue_on_interrupt is False

    async def test_empty_args_round_trip(self, registry: RunRegistry) -> None:
        run = await add(registry, task="t", args={"args": [], "kwargs": {}})

        got = await registry.get_run(run.run_id)

        assert got is not None
        assert got.args == {"args": [], "kwargs": {}}

    async def test_filter_by_task_and_dead(self, registry: RunRegistry) -> None:
        await add(registry, run_id="a", task="t1", created_at=at(1))
        await add(registry, run_id="b", task="t2", created_at=at(2))
        await add(registry, run_id="c", task="t1", created_at=at(3), dead=True)
        await add(registry, run_id="d", created_at=at(4))

        assert ids(await registry.list_runs(task="t1")) == ["c", "a"]
        assert ids(await registry.list_runs(task="t3")) == []
        assert ids(await registry.list_runs(dead=True)) == ["c"]
        assert ids(await registry.list_runs(dead=False)) == ["d", "b", "a"]
        assert ids(await registry.list_runs(task="t1", dead=False)) == ["a"]
        assert ids(await registry.list_runs(task="t1", dead=False, status="queued")) == ["a"]
        assert ids(await registry.list_runs(dead=False, limit=1, offset=1)) == ["b"]

    async def test_dead_changes_and_filters(self, registry: RunRegistry) -> None:
        run = await add(registry, task="t", status=RunStatus.RUNNING)

        failed = await registry.transition(run.run_id, RunStatus.FAILED, dead=True)

        assert failed is not None
        assert failed.dead is True
        assert ids(await registry.list_runs(dead=True)) == [run.run_id]
        updated = await registry.update_run(run.run_id, dead=False)
        assert updated.dead is False
        assert await registry.list_runs(dead=True) == []
        assert ids(await registry.list_runs(dead=False)) == [run.run_id]

    async def test_dead_run_cleaned_up(self, registry: RunRegistry) -> None:
        await add(registry, task="t", status=RunStatus.FAILED, dead=True, finished_at=ago(days=2))

        await registry.cleanup_old_runs(older_than=timedelta(days=1))

        assert await registry.list_runs(dead=True) == []
        assert await registry.list_runs(task="t") == []


class TestCountRuns:
    """count_runs counts runs per status, with every status a key."""

    async def test_empty(self, registry: RunRegistry) -> None:
        counts = await registry.count_runs()

        assert counts == dict.fromkeys(RunStatus, 0)
        assert all(isinstance(key, RunStatus) for key in counts)

    async def test_counts(self, registry: RunRegistry) -> None:
        statuses = [Q, Q, Q, R, C, C, F]
        for i, status in enumerate(statuses):
            await add(registry, name="a" if i % 2 else "b", status=status)

        assert await registry.count_runs() == {Q: 3, R: 1, C: 2, F: 1, X: 0}
        assert await registry.count_runs(name="a") == {Q: 1, R: 1, C: 1, F: 0, X: 0}
        assert await registry.count_runs(name="b") == {Q: 2, R: 0, C: 1, F: 1, X: 0}
        assert await registry.count_runs(name="none") == dict.fromkeys(RunStatus, 0)

    async def test_follows_transitions(self, registry: RunRegistry) -> None:
        run = await add(registry)
        await registry.transition(run.run_id, RunStatus.RUNNING)
        await registry.transition(run.run_id, RunStatus.COMPLETED)

        assert await registry.count_runs() == {Q: 0, R: 0, C: 1, F: 0, X: 0}


class TestOutput:
    """append_output numbers chunks from 1 per run; get_output reads them oldest first."""

    async def test_append_numbers_from_one(self, registry: RunRegistry) -> None:
        run = await add(registry)
        before = datetime.now(UTC)

        chunks = await registry.append_output(
            run.run_id, [("stdout", "hello\n"), ("stderr", "warn ü 🚀\n")]
        )

        assert [(c.seq, c.stream, c.text) for c in chunks] == [
            (1, "stdout", "hello\n"),
            (2, "stderr", "warn ü 🚀\n"),
        ]
        for chunk in chunks:
            assert isinstance(chunk, OutputChunk)
            assert chunk.at.utcoffset() == timedelta(0)
            assert before - timedelta(seconds=5) <= chunk.at <= datetime.now(UTC)
        assert await registry.get_output(run.run_id) == chunks

    async def test_seq_continues_per_run(self, registry: RunRegistry) -> None:
        first = await add(registry)
        second = await add(registry)

        await registry.append_output(first.run_id, [("stdout", "a"), ("stdout", "b")])
        other = await registry.append_output(second.run_id, [("stdout", "x")])
        more = await registry.append_output(first.run_id, (("stdout", t) for t in "cd"))

        assert [c.seq for c in other] == [1]
        assert [(c.seq, c.text) for c in more] == [(3, "c"), (4, "d")]
        assert [c.text for c in await registry.get_output(first.run_id)] == list("abcd")
        assert [c.text for c in await registry.get_output(second.run_id)] == ["x"]

    async def test_since_and_limit(self, registry: RunRegistry) -> None:
        run = await add(registry)
        await registry.append_output(run.run_id, [("stdout", str(i)) for i in range(1, 8)])

        def seqs(chunks: list[OutputChunk]) -> list[int]:
            return [c.seq for c in chunks]

        assert seqs(await registry.get_output(run.run_id, since=4)) == [5, 6, 7]
        assert seqs(await registry.get_output(run.run_id, limit=2)) == [1, 2]
        assert seqs(await registry.get_output(run.run_id, since=2, limit=3)) == [3, 4, 5]
        assert seqs(await registry.get_output(run.run_id, since=6, limit=5)) == [7]
        assert await registry.get_output(run.run_id, since=7) == []
        assert await registry.get_output(run.run_id, since=100) == []

    async def test_text_round_trips_exactly(self, registry: RunRegistry) -> None:
        run = await add(registry)
        texts = ["", " lead and trail \n", "\r\n\t", "x" * 10_000, "中文 ✓ 🚀", "'\"\\%_"]

        await registry.append_output(run.run_id, [("stdout", t) for t in texts])

        assert [c.text for c in await registry.get_output(run.run_id)] == texts

    async def test_append_output_chunks(self, registry: RunRegistry) -> None:
        run = await add(registry)
        await registry.append_output(run.run_id, [("stdout", "first")])
        given = [
            OutputChunk(seq=7, stream="stderr", text="oops\n", at=T0),
            OutputChunk(seq=1, text="plain"),
        ]
        before = datetime.now(UTC)

        chunks = await registry.append_output(run.run_id, [given[0], ("stdout", "pair"), given[1]])

        assert [(c.seq, c.stream, c.text) for c in chunks] == [
            (2, "stderr", "oops\n"),
            (3, "stdout", "pair"),
            (4, "stdout", "plain"),
        ]
        for chunk in chunks:  # the registry's clock, not the chunk's own
            assert before - timedelta(seconds=5) <= chunk.at <= datetime.now(UTC)
        assert (await registry.get_output(run.run_id))[1:] == chunks

    async def test_empty_append(self, registry: RunRegistry) -> None:
        run = await add(registry)

        assert await registry.append_output(run.run_id, []) == []
        assert await registry.get_output(run.run_id) == []

    async def test_no_output(self, registry: RunRegistry) -> None:
        run = await add(registry)

        assert await registry.get_output(run.run_id) == []
        assert await registry.get_output("no-such-run") == []

    async def test_append_to_unknown_run(self, registry: RunRegistry) -> None:
        with pytest.raises(RunNotFoundError) as info:
            await registry.append_output("no-such-run", [("stdout", "x")])

        assert info.value.run_id == "no-such-run"
        assert await registry.get_output("no-such-run") == []

    @pytest.mark.parametrize(
        "chunk",
        [["stdout", "x"], ("stdout",), ("stdout", "x", "y"), ("stdout", 1), (None, "x"), "ab"],
        ids=["list", "short", "long", "int-text", "none-stream", "str"],
    )
    async def test_bad_chunk(self, registry: RunRegistry, chunk: Any) -> None:
        run = await add(registry)

        with pytest.raises(TypeError):
            await registry.append_output(run.run_id, [("stdout", "ok"), chunk])

        assert await registry.get_output(run.run_id) == []

    @pytest.mark.parametrize("stream", ["", "s" * 65])
    async def test_bad_stream_name(self, registry: RunRegistry, stream: str) -> None:
        run = await add(registry)

        with pytest.raises(ValueError, match="stream"):
            await registry.append_output(run.run_id, [("stdout", "ok"), (stream, "x")])

        assert await registry.get_output(run.run_id) == []

    @pytest.mark.parametrize("args", [{"since": -1}, {"limit": 0}], ids=["since", "limit"])
    async def test_bad_read_args(self, registry: RunRegistry, args: dict[str, int]) -> None:
        run = await add(registry)

        with pytest.raises(ValueError, match=next(iter(args))):
            await registry.get_output(run.run_id, **args)


class TestTrimOutput:
    """trim_output (OutputTrimming) deletes the oldest chunks; seqs are never reused."""

    @staticmethod
    def trimming(registry: RunRegistry) -> OutputTrimming:
        assert isinstance(registry, OutputTrimming), "every shipped registry trims output"
        return registry

    async def test_deletes_older_chunks_and_seq_continues(self, registry: RunRegistry) -> None:
        run = await add(registry)
        await registry.append_output(run.run_id, [("stdout", str(i)) for i in range(1, 8)])

        assert await self.trimming(registry).trim_output(run.run_id, keep_from_seq=5) == 4

        kept = await registry.get_output(run.run_id)
        assert [(c.seq, c.text) for c in kept] == [(5, "5"), (6, "6"), (7, "7")]
        more = await registry.append_output(run.run_id, [("stderr", "8"), ("stdout", "9")])
        assert [c.seq for c in more] == [8, 9]
        assert [c.seq for c in await registry.get_output(run.run_id, since=2)] == [5, 6, 7, 8, 9]
        assert [c.seq for c in await registry.get_output(run.run_id, since=6)] == [7, 8, 9]
        assert [c.seq for c in await registry.get_output(run.run_id, since=4, limit=2)] == [5, 6]
        assert [c.seq for c in await registry.get_output(run.run_id, limit=1)] == [5]

    async def test_keeps_the_newest_chunk(self, registry: RunRegistry) -> None:
        run = await add(registry)
        await registry.append_output(run.run_id, [("stdout", "a"), ("stdout", "b")])

        assert await self.trimming(registry).trim_output(run.run_id, keep_from_seq=100) == 1

        assert [(c.seq, c.text) for c in await registry.get_output(run.run_id)] == [(2, "b")]
        assert [c.seq for c in await registry.append_output(run.run_id, [("stdout", "c")])] == [3]

    async def test_trimming_again_is_harmless(self, registry: RunRegistry) -> None:
        run = await add(registry)
        trimming = self.trimming(registry)
        await registry.append_output(run.run_id, [("stdout", str(i)) for i in range(1, 6)])
        await trimming.trim_output(run.run_id, keep_from_seq=3)

        assert await trimming.trim_output(run.run_id, keep_from_seq=3) == 0
        assert await trimming.trim_output(run.run_id, keep_from_seq=1) == 0
        assert await trimming.trim_output(run.run_id, keep_from_seq=4) == 1
        assert [c.seq for c in await registry.get_output(run.run_id)] == [4, 5]

    async def test_missing_run_or_no_output(self, registry: RunRegistry) -> None:
        run = await add(registry)
        trimming = self.trimming(registry)

        assert await trimming.trim_output("no-such-run", keep_from_seq=5) == 0
        assert await trimming.trim_output(run.run_id, keep_from_seq=5) == 0
        assert await registry.get_output(run.run_id) == []

    @pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
    async def test_bad_keep_from_seq(self, registry: RunRegistry, bad: Any) -> None:
        run = await add(registry)

        with pytest.raises(ValueError, match="keep_from_seq"):
            await self.trimming(registry).trim_output(run.run_id, keep_from_seq=bad)

    async def test_cleanup_deletes_trimmed_output(self, registry: RunRegistry) -> None:
        run = await add(registry, status=C, finished_at=ago(days=2))
        await registry.append_output(run.run_id, [("stdout", str(i)) for i in range(1, 4)])
        await self.trimming(registry).trim_output(run.run_id, keep_from_seq=3)

        assert await registry.cleanup_old_runs(older_than=timedelta(days=1)) == 1
        assert await registry.get_output(run.run_id) == []


class TestCleanup:
    """cleanup_old_runs deletes finished runs (and output) that finished long enough ago."""

    async def test_deletes_only_old_finished_runs(self, registry: RunRegistry) -> None:
        old = [
            await add(registry, status=s, created_at=ago(days=30), finished_at=ago(days=10))
            for s in (C, F, X)
        ]
        recent = [
            await add(registry, status=s, created_at=ago(days=30), finished_at=ago(minutes=1))
            for s in (C, F, X)
        ]
        active = [await add(registry, status=s, created_at=ago(days=30)) for s in (Q, R)]
        for run in old + recent:
            await registry.append_output(run.run_id, [("stdout", "bye")])

        deleted = await registry.cleanup_old_runs(older_than=timedelta(days=1))

        assert deleted == 3
        for run in old:
            assert await registry.get_run(run.run_id) is None
            assert await registry.get_output(run.run_id) == []
        for run in recent + active:
            assert await registry.get_run(run.run_id) == run
        for run in recent:
            assert [c.text for c in await registry.get_output(run.run_id)] == ["bye"]
        assert await registry.count_runs() == {Q: 1, R: 1, C: 1, F: 1, X: 1}

    async def test_nothing_to_delete(self, registry: RunRegistry) -> None:
        assert await registry.cleanup_old_runs(older_than=timedelta(0)) == 0

        run = await add(registry, status=C, finished_at=ago(minutes=5))

        assert await registry.cleanup_old_runs(older_than=timedelta(hours=1)) == 0
        assert await registry.get_run(run.run_id) == run

    async def test_never_deletes_unfinished(self, registry: RunRegistry) -> None:
        queued = await add(registry, status=Q, created_at=ago(days=400))
        running = await add(registry, status=R, created_at=ago(days=400), started_at=ago(days=399))

        deleted = await registry.cleanup_old_runs(older_than=timedelta(0), statuses=list(RunStatus))

        assert deleted == 0
        assert await registry.get_run(queued.run_id) == queued
        assert await registry.get_run(running.run_id) == running

    @pytest.mark.parametrize(
        ("statuses", "gone"),
        [
            (RunStatus.FAILED, {F}),
            ("cancelled", {X}),
            (["failed", RunStatus.COMPLETED], {F, C}),
            ([], set()),
        ],
        ids=["enum", "str", "list", "empty"],
    )
    async def test_statuses(
        self, registry: RunRegistry, statuses: Any, gone: set[RunStatus]
    ) -> None:
        runs = {
            s: await add(registry, status=s, created_at=ago(days=9), finished_at=ago(days=8))
            for s in (C, F, X)
        }

        deleted = await registry.cleanup_old_runs(older_than=timedelta(days=1), statuses=statuses)

        assert deleted == len(gone)
        for status, run in runs.items():
            expected = None if status in gone else run
            assert await registry.get_run(run.run_id) == expected

    async def test_keep_newest(self, registry: RunRegistry) -> None:
        # finished 10..14 days ago; created in the opposite order, so age must come
        # from finished_at, not created_at
        old = [
            await add(
                registry,
                run_id=f"old-{d}",
                status=C,
                created_at=ago(days=30 - d),
                finished_at=ago(days=10 + d),
            )
            for d in range(5)
        ]

        deleted = await registry.cleanup_old_runs(older_than=timedelta(days=1), keep=2)

        assert deleted == 3
        assert sorted(ids(await registry.list_runs())) == ["old-0", "old-1"]
        assert await registry.get_run(old[0].run_id) == old[0]

    async def test_keep_counts_recent_runs(self, registry: RunRegistry) -> None:
        recent = [await add(registry, status=F, finished_at=ago(minutes=m)) for m in (1, 2)]
        old = [
            await add(registry, status=C, created_at=ago(days=20), finished_at=ago(days=d))
            for d in (5, 6, 7, 8)
        ]

        deleted = await registry.cleanup_old_runs(older_than=timedelta(days=1), keep=3)

        assert deleted == 3
        for run in [*recent, old[0]]:
            assert await registry.get_run(run.run_id) == run
        for run in old[1:]:
            assert await registry.get_run(run.run_id) is None

    async def test_measured_from_finished_at(self, registry: RunRegistry) -> None:
        long_running = await add(
            registry, status=C, created_at=ago(days=60), finished_at=ago(hours=1)
        )

        assert await registry.cleanup_old_runs(older_than=timedelta(days=1)) == 0
        assert await registry.get_run(long_running.run_id) == long_running
        assert await registry.cleanup_old_runs(older_than=timedelta(minutes=30)) == 1
        assert await registry.get_run(long_running.run_id) is None

    async def test_bad_arguments(self, registry: RunRegistry) -> None:
        with pytest.raises(ValueError, match="keep"):
            await registry.cleanup_old_runs(older_than=timedelta(days=1), keep=-1)
        with pytest.raises(TypeError, match="keep"):
            await registry.cleanup_old_runs(older_than=timedelta(days=1), keep=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="timedelta"):
            await registry.cleanup_old_runs(older_than=3600)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="done"):
            await registry.cleanup_old_runs(older_than=timedelta(days=1), statuses="done")

    @pytest.mark.parametrize(
        "older_than",
        [timedelta(days=-1), timedelta(microseconds=-1), -timedelta(weeks=520)],
        ids=["day", "microsecond", "decade"],
    )
    async def test_negative_age(self, registry: RunRegistry, older_than: timedelta) -> None:
        # A negative age would put the cutoff in the future: every finished run would go.
        runs = [await add(registry, status=s, finished_at=ago(minutes=1)) for s in (C, F, X)]

        with pytest.raises(ValueError, match="older_than must not be negative"):
            await registry.cleanup_old_runs(older_than=older_than)

        for run in runs:
            assert await registry.get_run(run.run_id) == run

    @pytest.mark.parametrize("older_than", ["1d", 86400.0, None], ids=repr)
    async def test_age_not_a_timedelta(self, registry: RunRegistry, older_than: Any) -> None:
        run = await add(registry, status=C, finished_at=ago(days=10))

        with pytest.raises(TypeError, match="timedelta"):
            await registry.cleanup_old_runs(older_than=older_than)

        assert await registry.get_run(run.run_id) == run

    async def test_statuses_none_means_finished(self, registry: RunRegistry) -> None:
        old = [await add(registry, status=s, finished_at=ago(days=9)) for s in (C, F, X)]
        queued = await add(registry, status=Q, created_at=ago(days=9))

        deleted = await registry.cleanup_old_runs(older_than=timedelta(days=1), statuses=None)

        assert deleted == len(old)
        assert ids(await registry.list_runs()) == [queued.run_id]


class TestLifecycle:
    """A registry is an async context manager, and aclose is safe to call twice."""

    async def test_aclose_twice(self, registry: RunRegistry) -> None:
        await registry.aclose()
        await registry.aclose()

    async def test_async_with_returns_self(self, registry: RunRegistry) -> None:
        async with registry as entered:
            assert entered is registry
            run = await add(registry)
            assert await registry.get_run(run.run_id) == run

    async def test_is_a_run_registry(self, registry: RunRegistry) -> None:
        assert isinstance(registry, RunRegistry)


class TestGetStatuses:
    """get_statuses reads many runs' statuses at once; missing runs are left out."""

    async def test_statuses_of_many_runs(self, registry: RunRegistry) -> None:
        from runtrack.registry.base import StatusReading

        assert isinstance(registry, StatusReading)
        ids = [f"s-{i:04d}" for i in range(1_100)]  # more than one IN (...) list's worth
        for i, run_id in enumerate(ids):
            await registry.add_run(Run(run_id=run_id, name="s", status=(Q, R, C)[i % 3]))
        await registry.transition("s-0000", X)
        hostile = 'it\'s "quoted"; DROP TABLE runs; -- ✓'
        await registry.add_run(Run(run_id=hostile, status=F))

        asked = [*ids, hostile, "missing", "s-0001"]  # a duplicate, an unknown id
        statuses = await registry.get_statuses(asked)
        assert set(statuses) == {*ids, hostile}
        assert statuses["s-0000"] is X
        assert statuses["s-0001"] is R
        assert statuses["s-0002"] is C
        assert statuses[hostile] is F
        assert all(type(status) is RunStatus for status in statuses.values())
        assert await registry.get_statuses([]) == {}


class TestWriteBatch:
    """write_batch applies coalesced writes in order, each atomically, and says which applied."""

    async def test_a_batch_of_inserts_meeting_existing_runs(self, registry: RunRegistry) -> None:
        # Only inserts: SQL tries them without reading first and must fall back cleanly.
        from runtrack.registry.base import BatchWriting, RunWrite, stored_run

        assert isinstance(registry, BatchWriting)
        await registry.add_run(Run(run_id="i-queued", name="old", tags={"k": "old"}))
        await registry.add_run(Run(run_id="i-dup", name="old"))
        fresh = [Run(run_id=f"i-new-{i}", name="new", tags={"n": str(i)}) for i in range(3)]
        running = Run(run_id="i-queued", name="new", status=R)
        applied = await registry.write_batch(
            [
                RunWrite(fresh[0].run_id, stored=stored_run(fresh[0])),
                RunWrite("i-queued", stored=stored_run(running), to=R, expect=frozenset({Q})),
                RunWrite(fresh[1].run_id, run=fresh[1]),
                RunWrite("i-dup", run=Run(run_id="i-dup", name="new")),
                RunWrite(fresh[2].run_id, stored=stored_run(fresh[2])),
            ]
        )
        assert applied == [True, True, True, False, True]
        for run in fresh:
            assert await registry.get_run(run.run_id) == run
            assert [r.run_id for r in await registry.list_runs(tags=run.tags)] == [run.run_id]
        queued = await registry.get_run("i-queued")
        assert queued is not None
        assert (queued.name, queued.status, queued.tags) == ("old", R, {"k": "old"})
        dup = await registry.get_run("i-dup")
        assert dup is not None
        assert (dup.name, dup.status) == ("old", Q)

    async def test_insert_then_cas_and_field_updates(self, registry: RunRegistry) -> None:
        from runtrack.registry.base import BatchWriting, RunWrite

        assert isinstance(registry, BatchWriting)
        when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        done = Run(run_id="b-new", name="batch", status=RunStatus.COMPLETED, result={"n": 1})
        await registry.add_run(Run(run_id="b-old", name="batch"))
        await registry.add_run(Run(run_id="b-dup", name="batch"))
        applied = await registry.write_batch(
            [
                RunWrite(
                    "b-new", run=done, to=RunStatus.COMPLETED, expect=frozenset({RunStatus.QUEUED})
                ),
                RunWrite(
                    "b-old",
                    run=Run(run_id="b-old", name="batch", status=RunStatus.RUNNING),
                    to=RunStatus.RUNNING,
                    expect=frozenset({RunStatus.QUEUED}),
                    changes={"started_at": when, "owner": "me"},
                ),
                RunWrite("b-dup", run=Run(run_id="b-dup", name="batch")),
                RunWrite("b-missing", changes={"progress": 0.5}),
                RunWrite("b-old", changes={"progress": 0.25, "progress_message": "¼ ✓"}),
                RunWrite(
                    "b-old",
                    to=RunStatus.COMPLETED,
                    expect=frozenset({RunStatus.QUEUED}),
                    changes={"result": 1},
                ),
            ]
        )
        assert applied == [True, True, False, False, True, False]
        new = await registry.get_run("b-new")
        assert new is not None
        assert new.status is RunStatus.COMPLETED
        assert new.result == {"n": 1}
        old = await registry.get_run("b-old")
        assert old is not None
        assert old.status is RunStatus.RUNNING
        assert old.started_at == when
        assert old.owner == "me"
        assert old.progress == 0.25
        assert old.progress_message == "¼ ✓"
        assert old.result is None
        assert await registry.get_run("b-missing") is None
        assert (await registry.count_runs())[RunStatus.QUEUED] == 1  # b-dup untouched

    async def test_a_compare_and_set_for_an_owner(self, registry: RunRegistry) -> None:
        # A durable run's writes from a manager apply only while that manager owns the run.
        from runtrack.registry.base import BatchWriting, RunWrite, stored_run

        assert isinstance(registry, BatchWriting)
        for run_id, owner in (("o-mine", "a"), ("o-theirs", "b"), ("o-nobody", None)):
            await registry.add_run(Run(run_id=run_id, name="own", status=R, owner=owner))
        await registry.add_run(Run(run_id="o-moved", name="own", status=R, owner="b"))
        done = frozenset({R})
        applied = await registry.write_batch(
            [
                RunWrite("o-mine", to=C, expect=done, owner="a", changes={"result": 1}),
                RunWrite("o-theirs", to=C, expect=done, owner="a", changes={"result": 2}),
                RunWrite("o-nobody", to=C, expect=done, owner="a", changes={"result": 3}),
                # Without ``to`` the owner is not checked.
                RunWrite("o-theirs", owner="a", changes={"progress": 0.5}),
                # The owner an earlier write of the batch set is the one checked.
                RunWrite("o-moved", changes={"owner": "a"}),
                RunWrite("o-moved", to=C, expect=done, owner="a", changes={"result": 4}),
                # So is the owner of a run the batch inserts.
                RunWrite("o-new", stored=stored_run(Run(run_id="o-new", name="own", owner="b"))),
                RunWrite("o-new", to=R, expect=frozenset({Q}), owner="a"),
                RunWrite("o-new", to=R, expect=frozenset({Q}), owner="b"),
            ]
        )
        assert applied == [True, False, False, True, True, True, True, False, True]
        found = {}
        for run_id in ("o-mine", "o-theirs", "o-nobody", "o-moved", "o-new"):
            found[run_id] = await registry.get_run(run_id)
        outcome = {
            run_id: None if run is None else (run.status, run.owner, run.result)
            for run_id, run in found.items()
        }
        assert outcome == {
            "o-mine": (C, "a", 1),
            "o-theirs": (R, "b", None),
            "o-nobody": (R, None, None),
            "o-moved": (C, "a", 4),
            "o-new": (R, "b", None),
        }
        theirs = found["o-theirs"]
        assert theirs is not None
        assert theirs.progress == 0.5


HOSTILE = [
    "'; DROP TABLE runtrack_runs; --",
    "quote \" and ' both",
    "back\\slash \\' \\\"",
    "redis:*:[a-z]?{x}",
    "return redis.call('FLUSHALL')",
    "x') redis.call('DEL', KEYS[1]) --",
    "%s %(name)s {0} $1 ?",
    "a=b:c=d",
    "Ünïcödé ✓ 漢字 🚀",
    "tab\tnew\nline",
    "L" * 255,
]


class TestHostileInput:
    """Strings that look like attacks are stored and found verbatim and touch nothing else."""

    @pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
    async def test_stored_and_found_verbatim(self, registry: RunRegistry, text: str) -> None:
        control = Run(run_id="control", name="control", group="control", tags={"k": "v"})
        await registry.add_run(control)
        run = Run(run_id=text, name=text, group=text, tags={text: text}, parameters={text: text})
        await registry.add_run(run)

        stored = await registry.get_run(text)
        assert stored is not None
        assert (stored.run_id, stored.name, stored.group) == (text, text, text)
        assert stored.tags == {text: text}
        assert stored.parameters == {text: text}
        for found in (
            await registry.list_runs(name=text),
            await registry.list_runs(group=text),
            await registry.list_runs(tags={text: text}),
        ):
            assert [r.run_id for r in found] == [text]
        assert (await registry.count_runs(name=text))[RunStatus.QUEUED] == 1

        done = await registry.transition(text, RunStatus.RUNNING)
        assert done is not None
        await registry.append_output(text, [("stdout", text)])
        assert [c.text for c in await registry.get_output(text)] == [text]

        # Nothing else changed: the control run and the totals are intact.
        assert await registry.get_run("control") == control
        assert sum((await registry.count_runs()).values()) == 2
        assert [r.run_id for r in await registry.list_runs(name="control")] == ["control"]
