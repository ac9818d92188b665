"""The job platform's figures (``make bench BENCH_ARGS=jobs``; docs/benchmarks.md, "Jobs").

Real processes on embedded PostgreSQL and Redis: bench workers (:mod:`tests.bench.jobs_worker`)
and the jobs worker (``python -m libs.worker jobs``: the events recorder keeping every job's
record, the reconciler, the scheduler, the queue monitor).

- **enqueue → start**: one ``stamp`` job at a time to an idle worker (polling every 0.5 s, as
  deployed): enqueue time to the job's first line, p50 / p90 / p99;
- **throughput**: ``--jobs`` no-op jobs of one organization enqueued at once, until every one's
  record says succeeded: jobs per second through the whole runtime with records kept, with 1
  and 2 worker processes;
- **progress to an SSE client**: a watched job's progress events (as a job emits them) to a
  client connected to the jobs app's stream, p50 / p99;
- **events recorder**: 2,000 events/s for ``--duration`` seconds, its lag (events not yet
  applied) sampled every second: steady, or growing.

    python -m tests.bench.jobs_bench [--jobs 5000] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import func, select, text

from libs.db import make_engine, make_session_factory, session_scope
from libs.queue import (
    EVENTS_STREAM,
    JobEvent,
    emit_event,
    enqueue_now,
    enqueue_prepared,
    prepare_job,
)
from libs.queue.names import WATCH_KEY_PREFIX
from libs.testing import auth_headers, principal
from services.jobs.jobs.recorder import CONSUMER_GROUP
from services.jobs.jobs.repository import JobRepository
from services.jobs.models import Job
from tests.bench.jobs_worker import SERVICE, STARTED
from tests.bench.stack import ROOT, Proc, Stack, stack


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def start_bench_worker(s: Stack, name: str, max_jobs: int = 50) -> Proc:
    log = open(s.logs / f"{name}.log", "ab")  # noqa: SIM115
    popen = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.jobs_worker", s.infra.redis_url, str(max_jobs)],
        env=s.env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc = Proc(name, "", popen)
    s.procs[name] = proc
    return proc


async def wait_until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def latency(redis: Redis, samples: int) -> dict[str, float]:
    """Enqueue → start, one job at a time (the worker idle in between)."""
    await redis.delete(STARTED)
    # a first job warms the worker up (imports, connections)
    await enqueue_now(redis, service=SERVICE, function="stamp")
    await redis.blpop([STARTED], timeout=30)  # type: ignore[misc]
    waits = []
    for _ in range(samples):
        await asyncio.sleep(0.02)
        t0 = time.time()
        await enqueue_now(redis, service=SERVICE, function="stamp")
        got = await redis.blpop([STARTED], timeout=10)  # type: ignore[misc]
        assert got is not None, "a stamp job did not start"
        waits.append((float(got[1].split()[1]) - t0) * 1000)
    return {"p50": pct(waits, 50), "p90": pct(waits, 90), "p99": pct(waits, 99)}


async def throughput(redis: Redis, sessions: Any, jobs: int) -> float:
    """``jobs`` no-op jobs enqueued at once until every record says succeeded: jobs/s."""
    org = str(uuid.uuid4())
    batch = [prepare_job(service=SERVICE, function="noop", org_id=org) for _ in range(jobs)]
    started = time.perf_counter()
    for i in range(0, jobs, 500):
        await enqueue_prepared(redis, batch[i : i + 500])

    async def recorded() -> bool:
        async with sessions() as session:
            n = await session.scalar(
                select(func.count()).where(Job.org_id == uuid.UUID(org), Job.status == "succeeded")
            )
        return int(n or 0) >= jobs

    await wait_until(recorded, 600, "the jobs' records")
    return jobs / (time.perf_counter() - started)


async def sse_latency(redis: Redis, sessions: Any, jobs_url: str, samples: int) -> dict[str, float]:
    """A job's progress events to a client connected to its stream."""
    p = principal()
    jid = f"bench-{uuid.uuid4().hex}"
    event = JobEvent(
        job_id=jid, service=SERVICE, function="noop", status="running", org_id=str(p.org_id)
    )
    async with session_scope(sessions) as session:
        await JobRepository(session).apply_event(event)
    sent: dict[int, float] = {}
    got: list[float] = []
    async with (
        httpx.AsyncClient(base_url=jobs_url, timeout=30) as client,
        client.stream("GET", f"/v1/jobs/{jid}/events", headers=auth_headers(p)) as resp,
    ):
        lines = resp.aiter_lines()

        async def reader() -> None:
            async for line in lines:
                if line.startswith("data: ") and '"progress":' in line:
                    n = int(line.split('"progress":')[1].split(",")[0])
                    if n in sent:
                        got.append((time.perf_counter() - sent.pop(n)) * 1000)
                if len(got) >= samples:
                    return

        task = asyncio.create_task(reader())
        await wait_until(lambda: redis.exists(WATCH_KEY_PREFIX + jid), 10, "the watch")
        for i in range(samples):
            n = 1 + i % 99
            sent[n] = time.perf_counter()
            await emit_event(
                redis,
                JobEvent(
                    job_id=jid,
                    service=SERVICE,
                    function="noop",
                    status="progress",
                    progress=n,
                    org_id=str(p.org_id),
                    ts=datetime.now(UTC),
                ),
            )
            await asyncio.sleep(0.02)
        await asyncio.wait_for(task, 30)
    return {"p50": pct(got, 50), "p99": pct(got, 99)}


async def recorder_lag(redis: Redis, rate: int, duration: float) -> list[int]:
    """Events at ``rate``/s (queued, running, succeeded per job) for ``duration`` s; the
    recorder group's lag each second."""
    lags: list[int] = []
    per_tick = rate // 10
    t_end = time.monotonic() + duration
    next_sample = time.monotonic() + 1
    while time.monotonic() < t_end:
        tick = time.monotonic()
        async with redis.pipeline(transaction=False) as pipe:
            for _i in range(per_tick // 3):
                jid = uuid.uuid4().hex
                for status in ("queued", "running", "succeeded"):
                    ev = JobEvent(
                        job_id=jid, service=SERVICE, function="noop", status=status, org_id=None
                    )
                    pipe.xadd(EVENTS_STREAM, ev.to_fields())  # type: ignore[arg-type]
            await pipe.execute()
        if time.monotonic() >= next_sample:
            next_sample += 1
            groups = await redis.xinfo_groups(EVENTS_STREAM)
            names = (CONSUMER_GROUP, CONSUMER_GROUP.encode())
            group = next(g for g in groups if g["name"] in names)
            # entries not delivered yet, and those delivered but not applied
            last = group["last-delivered-id"]
            undelivered = await redis.xrange(EVENTS_STREAM, min=f"({_text(last)}", count=100_000)
            lags.append(len(undelivered) + int(group.get("pending") or 0))
        await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    return lags


async def measure(s: Stack, jobs: int, duration: float) -> str:
    redis = Redis.from_url(s.infra.redis_url)
    engine = make_engine(s.infra.database_url)
    sessions = make_session_factory(engine)
    out = ["| measure | figure |", "|---|---|"]
    try:
        jobs_worker = s.start_worker("jobs")
        start_bench_worker(s, "bench-1")
        await asyncio.sleep(2)
        lat = await latency(redis, 200)
        out.append(
            f"| enqueue → start (idle worker, poll 0.5 s) | p50 {lat['p50']:.1f} ms, "
            f"p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms |"
        )
        rate1 = await throughput(redis, sessions, jobs)
        out.append(f"| no-op jobs, records kept, 1 worker process | {rate1:,.0f} jobs/s |")
        start_bench_worker(s, "bench-2")
        await asyncio.sleep(2)
        rate2 = await throughput(redis, sessions, jobs)
        out.append(f"| no-op jobs, records kept, 2 worker processes | {rate2:,.0f} jobs/s |")
        out.append(f"| jobs worker RSS after | {jobs_worker.rss_mb():.0f} MiB |")
        app = s.start("jobs", "services.jobs.app:app")
        sse = await sse_latency(redis, sessions, app.url, 200)
        out.append(f"| progress → SSE client | p50 {sse['p50']:.1f} ms, p99 {sse['p99']:.1f} ms |")
        lags = await recorder_lag(redis, 2000, duration)
        out.append(
            f"| recorder at 2,000 events/s for {duration:.0f} s | lag each second: "
            f"{', '.join(str(n) for n in lags)} |"
        )
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await redis.aclose()
        await engine.dispose()
    return "\n".join(out)


def run_bench(duration: float, jobs: int = 5000) -> str:
    with stack() as s:
        return asyncio.run(measure(s, jobs, duration))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.jobs_bench")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    print(run_bench(args.duration, args.jobs))


if __name__ == "__main__":
    main()
