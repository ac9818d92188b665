"""Webhook delivery figures (``make bench BENCH_ARGS=notify``; docs/benchmarks.md, "Webhooks").

Real processes on embedded PostgreSQL and Redis: the jobs worker (``python -m libs.worker
jobs``) delivers; receivers are their own uvicorn processes (:mod:`tests.bench.notify_receiver`:
``fast`` answers at once, ``slow`` after a second). Events go through the real path: each
becomes a message of the organization's endpoint and a ``deliver_webhook`` job in its fair
queue (:func:`services.jobs.webhooks.service.messages_for_event`).

- **alone**: ``--events`` events of one organization (fast endpoint): deliveries per second
  until all are delivered, and each message's lag (stored -> delivered) p50 / p99;
- **beside a slow neighbour**: the same, while another organization's ``--slow`` messages to
  its slow endpoint were queued first: the fast organization's figures should barely move.

    python -m tests.bench.notify_bench [--events 2000] [--slow 200]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import func, select

from libs.db import make_engine, make_session_factory, session_scope
from libs.notify import JobOutcome, make_event
from services.jobs.notifications.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from services.jobs.webhooks.service import messages_for_event, new_secret
from tests.bench.stack import Stack, stack

BATCH = 500


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else 0


async def endpoint(sessions: Any, url: str) -> uuid.UUID:
    org = uuid.uuid4()
    async with session_scope(sessions) as session:
        session.add(WebhookEndpoint(org_id=org, url=url, kinds=[], secret=new_secret()))
    return org


async def emit(sessions: Any, redis: Redis, org: uuid.UUID, n: int) -> None:
    for start in range(0, n, BATCH):
        async with session_scope(sessions) as session:
            for i in range(start, min(n, start + BATCH)):
                ev = make_event(
                    "job.failed",
                    JobOutcome(job_id=f"j{i}", service="jobs", function="f", status="failed"),
                    org_id=org,
                    user_id=uuid.uuid4(),
                    source="bench",
                )
                await messages_for_event(session, redis, ev)


async def delivered(sessions: Any, org: uuid.UUID) -> int:
    async with sessions() as session:
        stmt = select(func.count()).where(
            WebhookMessage.org_id == org, WebhookMessage.status == "succeeded"
        )
        return int((await session.execute(stmt)).scalar_one())


async def lags(sessions: Any, org: uuid.UUID) -> list[float]:
    async with sessions() as session:
        stmt = (
            select(WebhookAttempt.created_at - WebhookMessage.created_at)
            .join(WebhookMessage, WebhookMessage.id == WebhookAttempt.message_id)
            .where(WebhookMessage.org_id == org, WebhookAttempt.status_code == 204)
        )
        return [d.total_seconds() for d in (await session.scalars(stmt)).all()]


async def run_org(sessions: Any, redis: Redis, org: uuid.UUID, n: int) -> dict[str, float]:
    start = time.monotonic()
    await emit(sessions, redis, org, n)
    while await delivered(sessions, org) < n:
        if time.monotonic() - start > 600:
            raise TimeoutError("deliveries did not finish in 10 minutes")
        await asyncio.sleep(0.2)
    took = time.monotonic() - start
    lag = await lags(sessions, org)
    return {"rate": n / took, "took": took, "p50": pct(lag, 50), "p99": pct(lag, 99)}


async def measure(s: Stack, events: int, slow: int) -> str:
    fast_rx = s.start("hook-fast", "tests.bench.notify_receiver:fast", http="httptools")
    slow_rx = s.start("hook-slow", "tests.bench.notify_receiver:slow", http="httptools")
    s.start_worker("jobs", env={"JOBS_WEBHOOKS_ALLOW_PRIVATE": "true"})
    engine = make_engine(s.infra.database_url)
    sessions = make_session_factory(engine)
    redis = Redis.from_url(s.infra.redis_url)
    out = ["| measurement | result |", "|---|---|"]
    try:
        alone = await run_org(
            sessions, redis, await endpoint(sessions, fast_rx.url + "/hook"), events
        )
        out.append(
            f"| {events} events, one organization, fast receiver | {alone['rate']:.0f} "
            f"deliveries/s ({alone['took']:.1f} s); lag p50 {alone['p50'] * 1000:.0f} ms, "
            f"p99 {alone['p99'] * 1000:.0f} ms |"
        )
        neighbour = await endpoint(sessions, slow_rx.url + "/hook")
        await emit(sessions, redis, neighbour, slow)
        beside = await run_org(
            sessions, redis, await endpoint(sessions, fast_rx.url + "/hook"), events
        )
        slow_done = await delivered(sessions, neighbour)
        out.append(
            f"| the same, {slow} messages of another organization to a 1 s endpoint queued "
            f"first | {beside['rate']:.0f} deliveries/s ({beside['took']:.1f} s); lag p50 "
            f"{beside['p50'] * 1000:.0f} ms, p99 {beside['p99'] * 1000:.0f} ms; the slow "
            f"organization had {slow_done} of {slow} delivered meanwhile |"
        )
    finally:
        await redis.aclose()
        await engine.dispose()
    return "\n".join(out)


def run_bench(duration: float, events: int = 2000, slow: int = 200) -> str:
    with stack() as s:
        return asyncio.run(measure(s, events, slow))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.notify_bench")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--slow", type=int, default=200)
    args = parser.parse_args()
    print(run_bench(0, args.events, args.slow))


if __name__ == "__main__":
    main()
