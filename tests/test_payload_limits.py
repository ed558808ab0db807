"""Parameters and results over ``max_payload_bytes`` are refused at the boundary."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from runtrack import BackgroundTaskManager, InMemoryRunRegistry, Run, RunStatus


async def _big(size: int) -> str:
    return "x" * size


async def _ok() -> None:
    return None


class TestPayloadLimits:
    """max_payload_bytes bounds what a run may store."""

    async def test_large_parameters_are_a_value_error_and_nothing_is_recorded(self) -> None:
        registry = InMemoryRunRegistry()
        async with BackgroundTaskManager(registry, max_payload_bytes=100) as manager:
            with pytest.raises(ValueError, match="max_payload_bytes=100"):
                await manager.submit(_ok, parameters={"blob": "y" * 200})
            coro = _ok()
            with pytest.raises(ValueError, match="reference"):
                manager.start_task(Run(name="big", parameters={"blob": "y" * 200}), coro)
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            run = await manager.submit(_ok, parameters={"small": 1})
            await manager.wait(run.run_id)
        assert (await registry.count_runs())[RunStatus.COMPLETED] == 1
        assert sum((await registry.count_runs()).values()) == 1

    async def test_large_result_is_recorded_as_none_with_a_warning(self) -> None:
        async with BackgroundTaskManager(max_payload_bytes=1000) as manager:
            with capture_logs() as logs:
                small = await manager.submit(_big, 10)
                large = await manager.submit(_big, 5000)
                await manager.wait_all()
            assert (await manager.wait(small.run_id)).result == "x" * 10
            finished = await manager.wait(large.run_id)
        assert finished.status is RunStatus.COMPLETED
        assert finished.result is None
        warned = [e for e in logs if e["event"] == "run_result_too_large"]
        assert [e["run_id"] for e in warned] == [large.run_id]
        assert warned[0]["size"] == 5002

    async def test_nan_result_is_recorded_as_none_and_nan_parameters_refused(self) -> None:
        async def nan() -> float:
            return float("nan")

        registry = InMemoryRunRegistry()
        async with BackgroundTaskManager(registry) as manager:
            with pytest.raises(ValidationError, match="not a JSON number"):
                await manager.submit(_ok, parameters={"ratio": float("inf")})
            with capture_logs() as logs:
                run = await manager.submit(nan)
                finished = await manager.wait(run.run_id)
        assert (finished.status, finished.result) == (RunStatus.COMPLETED, None)
        assert [e["run_id"] for e in logs if e["event"] == "run_result_not_json"] == [run.run_id]
        assert sum((await registry.count_runs()).values()) == 1

    async def test_limit_can_be_lifted_and_is_validated(self) -> None:
        async with BackgroundTaskManager(max_payload_bytes=None) as manager:
            run = await manager.submit(_big, 2_000_000)
            assert (await manager.wait(run.run_id)).result == "x" * 2_000_000
        with pytest.raises(ValueError, match="max_payload_bytes"):
            BackgroundTaskManager(max_payload_bytes=0)
