"""Sync work and sync callers: plain functions in worker threads, and `SyncTaskManager`."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import wsgiref.util
from collections.abc import Callable, Iterable
from typing import Any

import anyio.from_thread
import pytest
from structlog.testing import capture_logs

import runtrack
from runtrack import BackgroundTaskManager, RunStatus, SyncTaskManager, current_run

SAFETY = 30.0


class TestThreadRuns:
    """A plain function submitted to the async manager runs in a worker thread."""

    async def test_the_loop_keeps_ticking_while_ten_runs_sleep(self) -> None:
        ticks = 0
        release = threading.Event()

        def blocking(i: int) -> int:
            release.wait(SAFETY)
            return i

        async with BackgroundTaskManager() as manager:
            runs = [await manager.submit(blocking, i) for i in range(10)]

            async def tick() -> None:
                nonlocal ticks
                while ticks < 50:
                    await asyncio.sleep(0.001)
                    ticks += 1

            await asyncio.wait_for(tick(), SAFETY)  # the loop ran while all 10 blocked
            assert manager.stats().running == 10
            release.set()
            await manager.wait_all(timeout=SAFETY)
            results = [(await manager.wait(r.run_id)).result for r in runs]
        assert results == list(range(10))

    async def test_a_cancelled_thread_run_ends_at_once_and_its_result_is_discarded(self) -> None:
        entered, release, returned = threading.Event(), threading.Event(), threading.Event()

        def stubborn() -> str:
            entered.set()
            release.wait(SAFETY)
            returned.set()
            return "late"

        with capture_logs() as logs:
            async with BackgroundTaskManager(cancel_timeout=SAFETY) as manager:
                run = await manager.submit(stubborn)
                await asyncio.to_thread(entered.wait, SAFETY)
                started = time.monotonic()
                assert await manager.cancel_task(run.run_id)
                assert time.monotonic() - started < SAFETY / 2  # not waiting for the thread
                cancelled = await manager.wait(run.run_id, timeout=SAFETY)
                assert cancelled.status is RunStatus.CANCELLED
                release.set()
                await asyncio.to_thread(returned.wait, SAFETY)
                await _until(lambda: any(e["event"] == "thread_result_discarded" for e in logs))
            assert (await manager.registry.get_run(run.run_id)).status is RunStatus.CANCELLED  # type: ignore[union-attr]

    async def test_a_timed_out_thread_run_fails_at_once(self) -> None:
        release = threading.Event()

        def slow() -> None:
            release.wait(SAFETY)

        async with BackgroundTaskManager() as manager:
            run = await manager.submit(slow, timeout=0.05)
            failed = await manager.wait(run.run_id, timeout=SAFETY / 2)
            release.set()
        assert (failed.status, failed.error_type) == (RunStatus.FAILED, "TimeoutError")

    async def test_progress_and_current_run_from_the_thread(self) -> None:
        def work() -> str:
            handle = current_run()
            anyio.from_thread.run(runtrack.report_progress, 0.5, "half")
            return handle.run_id

        async with BackgroundTaskManager() as manager:
            run = await manager.submit(work)
            finished = await manager.wait(run.run_id, timeout=SAFETY)
        assert finished.result == run.run_id
        assert (finished.progress, finished.progress_message) == (0.5, "half")

    async def test_max_threads_is_respected(self) -> None:
        lock = threading.Lock()
        now = most = 0

        def counted() -> None:
            nonlocal now, most
            with lock:
                now += 1
                most = max(most, now)
            time.sleep(0.01)
            with lock:
                now -= 1

        async with BackgroundTaskManager(max_threads=3) as manager:
            for _ in range(30):
                await manager.submit(counted)
            await manager.wait_all(timeout=SAFETY)
            assert manager.stats().counts[RunStatus.COMPLETED] == 30
        assert most == 3

    def test_max_threads_is_validated(self) -> None:
        with pytest.raises(ValueError, match="max_threads"):
            BackgroundTaskManager(max_threads=0)


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SAFETY
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def _add(x: int, y: int) -> int:
    return x + y


class TestSyncTaskManager:
    """`SyncTaskManager` serves code with no event loop."""

    def test_eight_threads_submit_a_thousand_runs_each(self) -> None:
        with SyncTaskManager(max_concurrency=50) as manager:
            errors: list[BaseException] = []

            def submitter(base: int) -> None:
                try:
                    for i in range(1000):
                        manager.submit(_add, base, i)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=submitter, args=(t,)) for t in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(SAFETY * 4)
            manager.wait_all(timeout=SAFETY)
            assert errors == []
            assert manager.stats().counts[RunStatus.COMPLETED] == 8000

    def test_a_wsgi_app_starts_runs_and_reads_them(self) -> None:
        manager = SyncTaskManager()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ["REQUEST_METHOD"] == "POST":
                run = manager.submit(_add, 1, 2, tags={"via": "wsgi"})
                body: dict[str, Any] = {"run_id": run.run_id}
            else:
                run_id = environ["PATH_INFO"].rsplit("/", 1)[-1]
                finished = manager.wait(run_id, timeout=SAFETY)
                body = {"status": finished.status.value, "result": finished.result}
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]

        def call(method: str, path: str) -> dict[str, Any]:
            environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path}
            wsgiref.util.setup_testing_defaults(environ)
            status: list[str] = []
            body = b"".join(app(environ, lambda s, h: status.append(s)))
            assert status == ["200 OK"]
            parsed: dict[str, Any] = json.loads(body)
            return parsed

        try:
            run_id = call("POST", "/runs")["run_id"]
            assert call("GET", f"/runs/{run_id}") == {"status": "completed", "result": 3}
            run = manager.get_run(run_id)
            assert run is not None
            assert run.tags == {"via": "wsgi"}
        finally:
            manager.shutdown()

    def test_shutdown_from_the_main_thread_while_runs_are_active(self) -> None:
        release = threading.Event()

        def blocked() -> None:
            release.wait(SAFETY)

        async def sleeper() -> None:
            await asyncio.sleep(SAFETY)

        manager = SyncTaskManager(cancel_timeout=0.5)
        stuck = manager.submit(sleeper)
        thread_run = manager.submit(blocked)
        started = time.monotonic()
        manager.shutdown(grace=0.1)
        assert time.monotonic() - started < SAFETY / 2
        release.set()
        registry = manager.registry  # in memory: readable after shutdown, from a new loop
        for run_id in (stuck.run_id, thread_run.run_id):
            record = asyncio.run(registry.get_run(run_id))
            assert record is not None
            assert record.status is RunStatus.CANCELLED
        with pytest.raises(runtrack.ManagerClosedError):
            manager.submit(_add, 1, 1)
        manager.shutdown()  # a second call does nothing

    def test_cancel_and_get_run(self) -> None:
        release = threading.Event()

        def blocked() -> None:
            release.wait(SAFETY)

        with SyncTaskManager() as manager:
            run = manager.submit(blocked)
            assert manager.cancel_task(run.run_id)
            assert manager.wait(run.run_id, timeout=SAFETY).status is RunStatus.CANCELLED
            release.set()
            assert manager.get_run("missing") is None
