"""Run arq workers in-process for tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from libs.queue import EVENTS_STREAM, JobEvent
from libs.worker import Worker, worker_settings


def make_worker(redis_url: str, service: str, functions: Sequence[Any], **kw: Any) -> Worker:
    opts = {"handle_signals": False, "burst": True, "poll_delay": 0.02, **kw}
    return Worker(**worker_settings(service, functions, redis_url=redis_url, **opts))


async def run_burst(redis_url: str, service: str, functions: Sequence[Any], **kw: Any) -> Worker:
    """Run every queued job of ``service`` to completion, then stop."""
    worker = make_worker(redis_url, service, functions, **kw)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    return worker


async def events_for(redis: Redis, job_id: str) -> list[JobEvent]:
    out = []
    for _, fields in await redis.xrange(EVENTS_STREAM):
        ev = JobEvent.from_fields(fields)
        if ev.job_id == job_id:
            out.append(ev)
    return out
