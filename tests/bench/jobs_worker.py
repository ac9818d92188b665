"""A worker process for the jobs benchmarks: ``python -m tests.bench.jobs_worker <redis url>
[max jobs]``, on the queue of service ``bench``.

- ``noop()``: nothing (the runtime's own cost);
- ``stamp()``: pushes ``<job id> <unix time at start>`` to the list ``bench:started`` (enqueue
  to start latency, with the enqueuer's clock: one machine).
"""

from __future__ import annotations

import sys
import time

from libs.queue import JobContext, job
from libs.worker import Worker, worker_settings

SERVICE = "bench"
STARTED = "bench:started"


@job
async def noop(ctx: JobContext) -> None:
    return None


@job
async def stamp(ctx: JobContext) -> None:
    await ctx.redis.rpush(STARTED, f"{ctx.job_id} {time.time()}")  # type: ignore[misc]


def main() -> None:
    url = sys.argv[1]
    max_jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    worker = Worker(**worker_settings(SERVICE, [noop, stamp], redis_url=url, max_jobs=max_jobs))
    worker.run()


if __name__ == "__main__":
    main()
