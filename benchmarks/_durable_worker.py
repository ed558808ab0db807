"""A worker process of the ``durable`` section: ``python _durable_worker.py KIT URL TAG C LOGGING``.

Runs the worker of kit ``KIT`` (see `_durable_kits`) for ``TAG`` at concurrency ``C``,
prints ``ready`` on stdout once it takes jobs, and stops gracefully when its stdin is
closed. ``LOGGING`` is ``production`` (stdlib logging at INFO, as a service configures it,
to the null device) or ``default`` (nothing configured). The stamp jobs of the latency
measurement write their lines on stdout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys


def configure_logging(setup: str) -> None:
    """``production``: ``logging.basicConfig(level=INFO)``, into the null device."""
    if setup == "production":
        logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115
    elif setup != "default":
        raise ValueError(f"unknown logging setup {setup!r}")


async def main(kit_name: str, url: str, tag: str, concurrency: int) -> None:
    from _durable_kits import make_kit

    kit = make_kit(kit_name, url, concurrency)
    ready = asyncio.Event()
    stop = asyncio.Event()
    worker = asyncio.create_task(kit.worker(tag, concurrency, ready, stop))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([worker, waiter], return_when=asyncio.FIRST_COMPLETED)
    if worker.done():
        waiter.cancel()
        await worker  # raises what went wrong
        return
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    eof = asyncio.create_task(asyncio.to_thread(sys.stdin.buffer.read))
    await asyncio.wait([worker, eof], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    await worker


if __name__ == "__main__":
    kit_arg, url_arg, tag_arg, conc_arg, logging_arg = sys.argv[1:6]
    configure_logging(logging_arg)
    asyncio.run(main(kit_arg, url_arg, tag_arg, int(conc_arg)))
