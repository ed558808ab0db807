"""runtrack in fifteen lines: start runs, report progress, read back what became of them."""

import asyncio

from runtrack import BackgroundTaskManager, Run, report_progress


async def send_report(user_id: int) -> str:
    for step in range(1, 4):
        await asyncio.sleep(0.1)
        await report_progress(step / 3, f"section {step}/3")
    return f"report for user {user_id} sent"


async def main() -> None:
    async with BackgroundTaskManager(max_concurrency=10) as manager:
        run_id = manager.start_task(Run(name="send_report"), send_report(42))  # returns at once
        run = await manager.submit(send_report, 7, tags={"team": "billing"})
        for finished in [await manager.wait(run_id), await manager.wait(run.run_id)]:
            print(finished.status.value, finished.progress, finished.result)


if __name__ == "__main__":
    asyncio.run(main())
