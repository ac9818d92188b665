"""What folding job lifecycle events into ``jobs.jobs`` costs the jobs service.

Every LLM call queues one internal usage job, whose ``queued``, ``running`` and ``succeeded``
events land on the ``aistack:job-events`` stream; the jobs service's consumer
(:class:`services.jobs.jobs.service.EventConsumer`) folds them into rows. This pushes ``--jobs``
such triples onto the stream of embedded PostgreSQL (fsync on) and Redis, then times one
consumer draining them (the consumer's batch size as deployed, 100 entries), and counts its
commits, XACKs and upserted rows (a statement execution each; several per round trip when
executed as a batch).

The stream's layout follows production: the llm enqueues a burst of jobs (their ``queued``
events together), the billing worker then runs them (``running``, ``succeeded`` per job).

    python -m tests.bench.jobs_events [--jobs 5000] [--burst 20] [--batch 100]

To compare with an older consumer, run the same file in a worktree of that commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from redis.asyncio import Redis
from sqlalchemy import event, func, select

from libs.db import make_engine, make_session_factory
from libs.queue import EVENTS_STREAM, JobEvent, queue_name
from libs.usage import BILLING_SERVICE, RECORD_USAGE
from services.jobs.jobs.recorder import EventConsumer
from services.jobs.models import Job
from tests.bench.stack import stack


def usage_triples(jobs: int, burst: int) -> list[JobEvent]:
    """``jobs`` usage jobs' events in stream order: bursts of ``queued``, then each job's
    ``running`` and ``succeeded``."""
    t0 = datetime.now(UTC)
    out: list[JobEvent] = []
    for start in range(0, jobs, burst):
        ids = [uuid.uuid4().hex for _ in range(start, min(start + burst, jobs))]
        org, user = str(uuid.uuid4()), str(uuid.uuid4())
        base: dict[str, Any] = {
            "service": BILLING_SERVICE,
            "function": RECORD_USAGE,
            "org_id": org,
            "user_id": user,
            "internal": True,
            "queue": queue_name(BILLING_SERVICE),
        }
        ts = t0 + timedelta(milliseconds=start)
        for jid in ids:
            out.append(
                JobEvent(
                    job_id=jid,
                    status="queued",
                    progress=0,
                    request_id=f"chatcmpl-{jid}",
                    args=[{"model": "gpt-4o-mini", "prompt_tokens": 10, "completion_tokens": 5}],
                    kwargs={},
                    ts=ts,
                    **base,
                )
            )
        for jid in ids:
            for status, progress, after_ms in (("running", 0, 1), ("succeeded", 100, 2)):
                out.append(
                    JobEvent(
                        job_id=jid,
                        status=status,
                        progress=progress,
                        ts=ts + timedelta(milliseconds=after_ms),
                        **base,
                    )
                )
    return out


def _postgres_cpu(pgdata: Path) -> float:
    """CPU seconds of the PostgreSQL server and its live backends so far."""
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


async def measure(database_url: str, redis_url: str, pgdata: Path, args: Any) -> dict[str, Any]:
    engine = make_engine(database_url, pool_size=2)
    factory = make_session_factory(engine)
    redis = Redis.from_url(redis_url)
    counts = {"commits": 0, "xacks": 0, "upsert_rows": 0}

    def on_commit(conn: Any) -> None:
        counts["commits"] += 1

    def on_execute(conn: Any, cur: Any, sql: str, params: Any, ctx: Any, many: bool) -> None:
        if sql.startswith("INSERT INTO jobs.jobs"):
            counts["upsert_rows"] += len(params) if many else 1

    event.listen(engine.sync_engine, "commit", on_commit)
    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        events = usage_triples(args.jobs, args.burst)
        for i in range(0, len(events), 1000):
            pipe = redis.pipeline(transaction=False)
            for ev in events[i : i + 1000]:
                pipe.xadd(EVENTS_STREAM, ev.to_fields())
            await pipe.execute()

        consumer = EventConsumer(redis, factory, consumer="bench", batch=args.batch)
        xack = redis.xack

        async def counting_xack(*a: Any, **kw: Any) -> Any:
            counts["xacks"] += 1
            return await xack(*a, **kw)

        redis.xack = counting_xack
        async with factory() as s:  # connect before timing
            await s.scalar(select(func.count()).select_from(Job))
        counts["commits"] = counts["upsert_rows"] = 0
        cpu0, pg0 = time.process_time(), _postgres_cpu(pgdata)
        t0 = time.perf_counter()
        applied = await consumer.drain()
        wall = time.perf_counter() - t0
        cpu, pg = time.process_time() - cpu0, _postgres_cpu(pgdata) - pg0
        async with factory() as s:
            done = await s.scalar(
                select(func.count()).select_from(Job).where(Job.status == "succeeded")
            )
        assert applied == len(events), (applied, len(events))
        assert done == args.jobs, (done, args.jobs)
        return {
            "jobs": args.jobs,
            "events": len(events),
            "batch": args.batch,
            "seconds": round(wall, 3),
            "events_per_s": round(len(events) / wall),
            "commits_per_job": round(counts["commits"] / args.jobs, 3),
            "xacks_per_job": round(counts["xacks"] / args.jobs, 3),
            "upsert_rows_per_job": round(counts["upsert_rows"] / args.jobs, 3),
            "consumer_cpu_ms_per_job": round(cpu * 1000 / args.jobs, 3),
            "postgres_cpu_ms_per_job": round(pg * 1000 / args.jobs, 3),
        }
    finally:
        await redis.aclose()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--burst", type=int, default=20, help="queued events per llm burst")
    parser.add_argument("--batch", type=int, default=100, help="consumer read batch")
    args = parser.parse_args()
    with stack() as s:
        assert s.infra.postgres is not None, "needs the embedded PostgreSQL"
        result = asyncio.run(
            measure(s.infra.database_url, s.infra.redis_url, s.infra.postgres.pgdata, args)
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
