"""A manager paused past its lease (SIGSTOP, then SIGCONT) in a child process.

A survivor in the test process sweeps it while it is stopped. Once it runs again, the
child must learn it was declared dead, leave the records as the survivor wrote them (no
queued run started, no result written over FAILED), log each discarded result once, and
register again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import pytest

from child_owner import CHILD_START, OWNER_BACKENDS, child_script, owner_process
from helpers import SAFETY
from runtrack import RunStatus
from runtrack._models import utcnow
from runtrack.registry.base import ManagerPresence

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")

LEASE = 1.0
SHORT = 2.0  # the run that ends while the child is stopped

_CHILD = child_script(
    f"""
    def registry():
        kind, url, prefix = sys.argv[1:4]
        if kind == "sql":
            from runtrack.registry.sql import SQLRunRegistry
            return SQLRunRegistry(url, table_prefix=prefix)
        from runtrack.registry.redis import RedisRunRegistry
        return RedisRunRegistry(url, prefix=prefix)

    async def short():
        await asyncio.sleep({SHORT})
        return "late"

    async def queued(label):
        print(json.dumps({{"started": label}}), flush=True)
        await asyncio.sleep(0.1)

    async def main():
        manager = BackgroundTaskManager(
            registry(), owner="paused", heartbeat_interval=0.1, lease={LEASE},
            poll_interval=0.1, max_concurrency=2,
        )
        running = set()
        ready = asyncio.Event()

        def seen(event):
            if event.status is RunStatus.RUNNING:
                running.add(event.run_id)
                if len(running) == 2:
                    ready.set()

        manager.add_listener(seen)
        async with manager:
            ids = {{"short": (await manager.submit(short, name="short")).run_id}}
            ids["long"] = (await manager.submit(asyncio.sleep, 3600, name="long")).run_id
            for name in ("queued-1", "queued-2"):
                ids[name] = (await manager.submit(queued, name, name=name)).run_id
            await ready.wait()
            await manager._writer.flush()
            print(json.dumps({{"ready": ids}}), flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """,
    level="INFO",
)


@pytest.mark.parametrize("backend", sorted(OWNER_BACKENDS))
async def test_a_paused_manager_leaves_the_survivors_records(backend: str) -> None:
    async with OWNER_BACKENDS[backend]() as (registry, args):
        assert isinstance(registry, ManagerPresence)
        async with owner_process(_CHILD, *args) as child:
            ready = await child.until(lambda i: "ready" in i, CHILD_START)
            ids: dict[str, str] = ready["ready"]
            started = time.monotonic()
            os.kill(child.process.pid, signal.SIGSTOP)

            # The survivor: sweeps the child once its own lease has run out.
            async with asyncio.timeout(SAFETY):
                while True:
                    swept = await registry.interrupt_dead_managers(utcnow(), "survivor")
                    if swept:
                        break
                    await asyncio.sleep(0.05)
            assert {s.run_id: s.status for s in swept} == {
                ids["short"]: RunStatus.FAILED,
                ids["long"]: RunStatus.FAILED,
                ids["queued-1"]: RunStatus.CANCELLED,
                ids["queued-2"]: RunStatus.CANCELLED,
            }
            written = {name: await registry.get_run(run_id) for name, run_id in ids.items()}
            assert await registry.list_managers() == []
            # Stopped for longer than the short run takes: it ends as soon as it runs again.
            await asyncio.sleep(max(0.0, SHORT + 0.5 - (time.monotonic() - started)))
            os.kill(child.process.pid, signal.SIGCONT)

            # Both, in either order: the short run's refused write, the heartbeat's answer.
            wanted = {"manager_declared_dead", "result_discarded"}

            def both(_: dict[str, Any]) -> bool:
                return wanted <= {i.get("event") for i in child.seen}

            await child.until(both)
            (discarded,) = [i for i in child.seen if i.get("event") == "result_discarded"]
            assert discarded["run_id"] == ids["short"]
            async with asyncio.timeout(SAFETY):  # registered again, and beating
                while True:
                    managers = await registry.list_managers()
                    if [m for m in managers if m.owner == "paused" and m.running == 0]:
                        break
                    await asyncio.sleep(0.05)
            (again,) = await registry.list_managers()
            assert again.owner == "paused"
            await child.kill()
        # The records stay as the survivor wrote them.
        for name, run_id in ids.items():
            assert await registry.get_run(run_id) == written[name], name
        assert not [i for i in child.seen if "started" in i]  # no queued run started
        events = [i.get("event") for i in child.seen]
        assert events.count("result_discarded") == 1
