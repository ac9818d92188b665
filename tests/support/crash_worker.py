"""A worker process to kill: ``python -m tests.support.crash_worker <redis url> [lease s]``.

It runs ``crashy(name, log)``: each try appends ``start <name> <attempt>`` to the file
``log``; the first try then waits (to be killed mid-job), a later one appends ``done <name>``
and ends.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from libs.queue import JobContext, job
from libs.worker import Worker, worker_settings

SERVICE = "crashtest"


def note(log: str, line: str) -> None:
    with Path(log).open("a") as f:
        f.write(line + "\n")


@job
async def crashy(ctx: JobContext, name: str, log: str) -> str:
    note(log, f"start {name} {ctx.attempt}")
    if ctx.attempt == 1:
        await asyncio.sleep(3600)
    await ctx.progress(50, "second try")
    note(log, f"done {name}")
    return name


def main() -> None:
    url = sys.argv[1]
    lease = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    worker = Worker(
        **worker_settings(SERVICE, [crashy], redis_url=url, lease_s=lease, poll_delay=0.05)
    )
    worker.run()


if __name__ == "__main__":
    main()
