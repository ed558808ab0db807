"""The @background decorator: calling the function starts a tracked run."""

from __future__ import annotations

import asyncio
import functools

import pytest

import runtrack
from runtrack import BackgroundTaskManager, Retry, RunStatus, RuntrackError


class TestManagerBackground:
    """@manager.background turns an async function into a fire-and-forget launcher."""

    async def test_call_returns_run_id_and_runs_with_options(self) -> None:
        manager = BackgroundTaskManager(group_limits={"mail": 1})
        calls: list[tuple[str, str]] = []

        @manager.background(timeout=5, group="mail", tags={"kind": "email"})
        async def send(to: str, name: str = "friend") -> str:
            calls.append((to, name))
            return f"hi {name}"

        async with manager:
            run_id = send("ada@example.com", name="Ada")  # the function's own name= argument
            assert isinstance(run_id, str)
            assert manager.is_task_active(run_id)
            run = await manager.wait(run_id, timeout=5)
        assert run.status is RunStatus.COMPLETED
        assert run.result == "hi Ada"
        assert run.name.endswith("send")
        assert (run.group, run.timeout, run.tags) == ("mail", 5, {"kind": "email"})
        assert calls == [("ada@example.com", "Ada")]
        assert send.__name__ == "send"
        assert await send.func("x", name="inline") == "hi inline"  # the original, awaited

    async def test_retry_and_failures_are_recorded(self) -> None:
        manager = BackgroundTaskManager()
        attempts = 0

        @manager.background(retry=Retry(attempts=3, backoff=0))
        async def flaky() -> int:
            nonlocal attempts
            attempts += 1
            if attempts < 3:
                raise ConnectionError("try again")
            return attempts

        async with manager:
            run = await manager.wait(flaky(), timeout=5)
        assert (run.status, run.result, run.attempt) == (RunStatus.COMPLETED, 3, 3)

    async def test_a_sync_function_runs_in_a_thread_when_decorated(self) -> None:
        async with BackgroundTaskManager() as manager:

            @manager.background()
            def plain(x: int) -> int:
                return x * 2

            run_id = plain(21)
            assert (await manager.wait(run_id, timeout=10)).result == 42

    async def test_partials_and_async_callables_are_accepted(self) -> None:
        async def add(a: int, b: int) -> int:
            return a + b

        class Adder:
            async def __call__(self, a: int) -> int:
                return a + 100

        manager = BackgroundTaskManager()
        by_partial = manager.background(name="partial")(functools.partial(add, 1))
        by_object = manager.background(name="object")(Adder())
        async with manager:
            first = await manager.wait(by_partial(2), timeout=5)
            second = await manager.wait(by_object(1), timeout=5)
        assert (first.result, second.result) == (3, 101)


class TestModuleBackground:
    """runtrack.background resolves the default manager when called, not when declared."""

    async def test_uses_the_default_manager(self) -> None:
        done = asyncio.Event()

        @runtrack.background(name="ping")
        async def ping() -> str:
            done.set()
            return "pong"

        with pytest.raises(RuntrackError, match="set_default_manager"):
            ping()
        async with BackgroundTaskManager() as manager:
            runtrack.set_default_manager(manager)
            try:
                assert runtrack.get_default_manager() is manager
                run = await manager.wait(ping(), timeout=5)
            finally:
                runtrack.set_default_manager(None)
        assert (run.name, run.result) == ("ping", "pong")
        assert done.is_set()


class TestFallbackWhenRegistryIsDown:
    """With the registry unreachable, @background work still runs and /health says degraded."""

    async def test_work_runs_and_record_catches_up(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import httpx
        from fastapi import FastAPI

        from runtrack.fastapi import lifespan, runs_router
        from test_batch_writer import FlakyBatchRegistry

        class DownRegistry(FlakyBatchRegistry):
            """Reads fail too while it is down, as with a real server."""

            async def get_run(self, run_id: str) -> runtrack.Run | None:
                if self.down:
                    raise runtrack.RegistryUnavailableError("flaky", "connection refused")
                return await super().get_run(run_id)

        # A registry that is not the in-memory fast path, and that can be taken down.
        monkeypatch.setattr("runtrack._recording.InMemoryRunRegistry", type("NotIt", (), {}))
        registry = DownRegistry()
        ran = asyncio.Event()

        @runtrack.background(name="send_invoice")
        async def send_invoice(number: int) -> int:
            ran.set()
            return number

        app = FastAPI(lifespan=lifespan(registry))
        app.include_router(runs_router())

        @app.post("/invoices/{number}")
        async def create(number: int) -> dict[str, str]:
            return {"run_id": send_invoice(number)}

        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            registry.down = True
            response = await client.post("/invoices/7")
            assert response.status_code == 200
            run_id = response.json()["run_id"]
            await asyncio.wait_for(ran.wait(), 5)  # the work ran with the registry down
            health = await client.get("/health")
            assert health.status_code == 503
            assert health.json()["status"] == "degraded"
            assert run_id not in registry._runs  # not written yet: tracked in memory only
            registry.down = False
            manager = runtrack.get_default_manager()
            run = await manager.wait(run_id, timeout=5)
            assert (run.status, run.result) == (RunStatus.COMPLETED, 7)
            assert (await client.get("/health")).json()["status"] == "ok"
