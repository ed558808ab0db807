"""Section ``commands``: command runs (`run_command`) against bare asyncio subprocesses.

Two measurements, each runtrack against ``asyncio.create_subprocess_exec`` alone at the
same concurrency:

- commands per second for ``true`` (``--cmd-n`` commands, ``--cmd-concurrency`` at once):
  runtrack records each one (QUEUED, RUNNING, COMPLETED, output, result) in the in-memory
  registry; the bare contender only starts the process, reads its pipes and waits;
- output throughput (MB/s) for one process printing ``--cmd-mb`` MB in 1000-byte lines:
  runtrack decodes, chunks and keeps the newest 1 MB (``output_limit``); the bare
  contender reads the pipe and throws the bytes away.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from time import perf_counter
from typing import Any

from _harness import Column, SectionResult, Table, fmt_int, fmt_ratio, interleaved, section
from runtrack import BackgroundTaskManager, RunStatus

PRINTER = (
    "import sys\n"
    "line = ('y' * 999 + '\\n').encode()\n"
    "block = line * 1000\n"
    "for _ in range({blocks}):\n"
    "    sys.stdout.buffer.write(block)\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("commands")
    group.add_argument("--cmd-n", type=int, default=500, help="`true` commands per round")
    group.add_argument("--cmd-concurrency", type=int, default=10, help="commands at once")
    group.add_argument("--cmd-mb", type=int, default=100, help="MB printed by one command")
    group.add_argument("--cmd-repeat", type=int, default=3, help="rounds per contender")


async def runtrack_true(n: int, concurrency: int) -> float:
    async with BackgroundTaskManager(max_concurrency=concurrency) as manager:
        started = perf_counter()
        runs = [await manager.run_command(["true"]) for _ in range(n)]
        await manager.wait_all()
        elapsed = perf_counter() - started
        counts = await manager.registry.count_runs()
    if counts[RunStatus.COMPLETED] != n:
        raise RuntimeError(f"{n - counts[RunStatus.COMPLETED]} of {len(runs)} did not complete")
    return elapsed


async def bare_true(n: int, concurrency: int) -> float:
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            proc = await asyncio.create_subprocess_exec(
                "true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"true exited with {proc.returncode}")

    started = perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return perf_counter() - started


async def runtrack_output(mb: int) -> float:
    async with BackgroundTaskManager() as manager:
        started = perf_counter()
        run = await manager.run_command([sys.executable, "-c", PRINTER.format(blocks=mb)])
        done = await manager.wait(run.run_id)
        elapsed = perf_counter() - started
    if done.status is not RunStatus.COMPLETED:
        raise RuntimeError(f"the printer ended {done.status.value}: {done.error_message}")
    return elapsed


async def bare_output(mb: int) -> float:
    started = perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PRINTER.format(blocks=mb), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    while await proc.stdout.read(256 * 1024):
        pass
    await proc.wait()
    return perf_counter() - started


@section("commands", "Command runs against bare asyncio subprocesses", add_arguments=add_arguments)
def run(args: argparse.Namespace) -> SectionResult:
    n, concurrency, mb, repeat = args.cmd_n, args.cmd_concurrency, args.cmd_mb, args.cmd_repeat
    spawn = interleaved(
        [
            ("runtrack run_command", lambda: runtrack_true(n, concurrency)),
            ("asyncio subprocess", lambda: bare_true(n, concurrency)),
        ],
        n=n,
        repeat=repeat,
        quiet=args.quiet,
    )
    output = interleaved(
        [
            ("runtrack run_command", lambda: runtrack_output(mb)),
            ("asyncio subprocess", lambda: bare_output(mb)),
        ],
        n=mb,  # "runs per second" is MB per second here
        repeat=repeat,
        quiet=args.quiet,
    )
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for what, samples, unit in (
        ("`true`, commands/s", spawn, "commands/s"),
        (f"{mb} MB of output, MB/s", output, "MB/s"),
    ):
        bare = samples["asyncio subprocess"]
        for label, sample in samples.items():
            if sample.error is not None:
                errors.append(f"{what} {label}: {sample.error}")
                continue
            rows.append(
                {
                    "measurement": what,
                    "contender": label,
                    "unit": unit,
                    "median": sample.median,
                    "best": sample.best,
                    "ratio": sample.median / bare.median if bare.seconds else float("nan"),
                }
            )
    table = Table(
        columns=[
            Column("measurement", "measurement", align="<"),
            Column("contender", "contender", align="<"),
            Column("median", "median", fmt_int),
            Column("best", "best", fmt_int),
            Column("vs asyncio", "ratio", fmt_ratio),
        ],
        rows=rows,
    )
    return SectionResult(
        tables=[table],
        notes=[
            f"{n} `true` commands, {concurrency} at once; one command printing {mb} MB in "
            "1000-byte lines (runtrack keeps the newest 1 MB); in-memory registry; "
            f"median of {repeat} rounds.",
        ],
        data={"n": n, "concurrency": concurrency, "mb": mb, "repeat": repeat},
        errors=errors,
    )
