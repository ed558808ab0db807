"""Runs with values a store refuses, and ids that already ended, on every backend.

Conformance for the manager over the five registries (the ``registry`` fixture): a value
no store could hold is refused at submission (ids, names, tags, parameters), recorded as
``FAILED`` with ``error_type="ResultNotStorable"`` (results) or escaped (error and progress
messages); the other runs of the same batch land, and `shutdown` returns. A run id that
already ended is never run again.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
from structlog.testing import capture_logs

from runtrack import (
    BackgroundTaskManager,
    DuplicateRunError,
    InMemoryRunRegistry,
    Run,
    RunRegistry,
    RunStatus,
    report_progress,
)

SAFETY = 60.0

NUL = "bad\x00value"
SURROGATE = "bad\ud800value"


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


HOSTILE_RESULTS = {
    "nul": NUL,
    "surrogate": SURROGATE,
    "nul-in-json": {"k": [NUL]},
    "surrogate-key": {SURROGATE: 1},
    "nested-40": _nested(40),
}


class TestHostileValues:
    """Values a store would refuse never stop the writer nor lose other runs."""

    @pytest.mark.parametrize(
        "options",
        [
            {"name": NUL},
            {"name": SURROGATE},
            {"run_id": "id\x00"},
            {"tags": {"k": NUL}},
            {"tags": {SURROGATE: "v"}},
            {"parameters": {"p": NUL}},
            {"parameters": {"p": [SURROGATE]}},
            {"parameters": {"p": _nested(40)}},
        ],
        ids=lambda o: next(iter(o)),
    )
    async def test_refused_at_submission(
        self, registry: RunRegistry, options: dict[str, Any]
    ) -> None:
        async def work() -> int:
            return 1

        async with BackgroundTaskManager(registry) as manager:
            with pytest.raises(ValueError, match=r"NUL|surrogate|nest"):
                await manager.submit(work, **options)
            with pytest.raises(ValueError, match=r"NUL|surrogate|nest"):
                manager.start_task(Run(**{"name": "n", **options}), work())
            fine = await manager.submit(work)
            assert (await manager.wait(fine.run_id, timeout=SAFETY)).result == 1
        assert sum((await registry.count_runs()).values()) == 1

    async def test_unstorable_results_fail_and_the_rest_of_the_batch_lands(
        self, registry: RunRegistry
    ) -> None:
        async def returns(value: Any) -> Any:
            return value

        async def fails(message: str) -> None:
            raise RuntimeError(message)

        async def progresses(message: str) -> str:
            await report_progress(0.5, message)
            return "ok"

        async with BackgroundTaskManager(registry, max_payload_bytes=None) as manager:
            good = [manager.start_task(Run(name="good"), returns(i)) for i in range(20)]
            bad = {
                key: manager.start_task(Run(name=f"bad-{key}"), returns(value))
                for key, value in HOSTILE_RESULTS.items()
            }
            big = manager.start_task(Run(name="big"), returns("x" * 10_000_000))
            error_ids = [manager.start_task(Run(name="err"), fails(v)) for v in (NUL, SURROGATE)]
            progress_ids = [
                manager.start_task(Run(name="prog"), progresses(v)) for v in (NUL, SURROGATE)
            ]
            more = [manager.start_task(Run(name="good"), returns(i)) for i in range(20)]
            await manager.wait_all(timeout=SAFETY)

        for i, run_id in enumerate(good + more):
            run = await registry.get_run(run_id)
            assert run is not None
            assert (run.status, run.result) == (RunStatus.COMPLETED, i % 20)
        for key, run_id in bad.items():
            run = await registry.get_run(run_id)
            assert run is not None
            assert run.status is RunStatus.FAILED, key
            assert run.error_type == "ResultNotStorable", key
            assert run.result is None
            assert run.error_message is not None
            assert re.search(r"NUL|surrogate|nested", run.error_message), run.error_message
        big_run = await registry.get_run(big)
        assert big_run is not None
        assert big_run.status is RunStatus.COMPLETED
        assert big_run.result == "x" * 10_000_000
        for run_id, escaped in zip(error_ids, ("bad\\x00value", "bad\\ud800value"), strict=True):
            run = await registry.get_run(run_id)
            assert run is not None
            assert (run.status, run.error_type) == (RunStatus.FAILED, "RuntimeError")
            assert run.error_message == escaped
        for run_id, escaped in zip(progress_ids, ("bad\\x00value", "bad\\ud800value"), strict=True):
            run = await registry.get_run(run_id)
            assert run is not None
            assert run.status is RunStatus.COMPLETED
            assert run.progress_message == escaped


class TestEndedIdsNeverRunAgain:
    """`start_task` with the id of a run that already ended runs nothing, on every backend."""

    async def test_an_ended_run_is_not_started_again(self, registry: RunRegistry) -> None:
        ran: list[int] = []

        async def work(i: int) -> int:
            ran.append(i)
            return i

        async with BackgroundTaskManager(registry) as manager:
            first = await manager.submit(work, 1)
            ended = await manager.wait(first.run_id, timeout=SAFETY)
            again = work(2)
            with capture_logs() as logs:
                # The memory registry knows at once; the others when the registry answers.
                if isinstance(registry, InMemoryRunRegistry):
                    with pytest.raises(DuplicateRunError):
                        manager.start_task(Run(run_id=first.run_id, name="again"), again)
                    with pytest.raises(DuplicateRunError):
                        manager.start_call(work, 3, run_id=first.run_id)
                else:
                    manager.start_task(Run(run_id=first.run_id, name="again"), again)
                    with pytest.raises(DuplicateRunError, match="manager"):
                        manager.start_call(work, 3, run_id=first.run_id)  # still held here
                    await manager.wait_all(timeout=SAFETY)
                    manager.start_call(work, 3, run_id=first.run_id)
                await manager.wait_all(timeout=SAFETY)
        assert ran == [1]
        assert inspect.getcoroutinestate(again) == inspect.CORO_CLOSED
        assert await registry.get_run(first.run_id) == ended  # untouched
        refused = [e for e in logs if e["event"] == "run_refused"]
        assert len(refused) == (0 if isinstance(registry, InMemoryRunRegistry) else 2), logs

    async def test_a_run_recorded_queued_beforehand_is_run(self, registry: RunRegistry) -> None:
        run = Run(name="from_api", parameters={"source": "api"})
        await registry.add_run(run)

        async def work() -> str:
            return "ran"

        async with BackgroundTaskManager(registry) as manager:
            manager.start_task(run, work())
            finished = await manager.wait(run.run_id, timeout=SAFETY)
        assert (finished.status, finished.result) == (RunStatus.COMPLETED, "ran")
        assert finished.parameters == {"source": "api"}
