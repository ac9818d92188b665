"""The queue monitor: the queues' gauges (:mod:`services.jobs.queues.metrics`), from Redis,
every ``interval_s`` (the jobs worker runs it; Prometheus scrapes that worker)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from libs.db import SessionFactory
from libs.queue import fair
from libs.queue.names import EVENTS_STREAM, WORKER_KEY_PREFIX, queue_name
from libs.registry import SERVICES
from services.jobs.jobs.recorder import CONSUMER_GROUP
from services.jobs.queues.metrics import (
    QUEUE_CAPACITY,
    QUEUE_JOBS,
    QUEUE_OLDEST,
    QUEUE_WORKERS,
    RECORDER_LAG,
    RECORDER_PENDING,
)
from services.jobs.queues.repository import QueueRepository


@dataclass
class QueueState:
    """One queue, as Redis sees it now."""

    queue: str
    depth: fair.QueueDepth
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def running(self) -> int:
        return sum(int(w.get("running") or 0) for w in self.workers)

    @property
    def slots(self) -> int:
        return sum(int(w.get("max_jobs") or 0) for w in self.workers)

    def oldest_age_s(self, now_ms: int) -> float:
        return max(0.0, (now_ms - self.depth.oldest_ms) / 1000) if self.depth.oldest_ms else 0.0


async def live_workers(redis: Redis) -> list[dict[str, Any]]:
    """Every worker whose heartbeat is fresh (libs.worker.presence)."""
    keys = [k async for k in redis.scan_iter(match=WORKER_KEY_PREFIX + "*", count=500)]
    if not keys:
        return []
    out = []
    for raw in await redis.mget(keys):
        if raw:
            try:
                out.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                continue
    return out


async def queue_states(redis: Redis, sessions: SessionFactory) -> list[QueueState]:
    """Every known queue (the services', the declared job types', the live workers')."""
    workers = await live_workers(redis)
    async with sessions() as session:
        declared = await QueueRepository(session).known_queues()
    names = {queue_name(s) for s in SERVICES} | set(declared)
    names |= {str(w["queue"]) for w in workers if w.get("queue")}
    by_queue: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for w in workers:
        by_queue[str(w.get("queue"))].append(w)
    return [QueueState(q, await fair.depth(redis, q), by_queue.get(q, [])) for q in sorted(names)]


def _ms(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-")[0])


async def recorder_lag(redis: Redis) -> tuple[float, int]:
    """(seconds the recorder is behind the newest event, events it holds unapplied)."""
    try:
        groups = await redis.xinfo_groups(EVENTS_STREAM)
    except Exception:  # no stream yet
        return 0.0, 0
    group = next(
        (g for g in groups if g.get("name") in (CONSUMER_GROUP, CONSUMER_GROUP.encode())), None
    )
    newest = await redis.xrevrange(EVENTS_STREAM, count=1)
    if group is None or not newest:
        return 0.0, 0
    behind_ms = _ms(newest[0][0]) - _ms(group.get("last-delivered-id") or "0-0")
    return max(0.0, behind_ms / 1000), int(group.get("pending") or 0)


class QueueMonitor:
    def __init__(self, redis: Redis, sessions: SessionFactory, interval_s: float = 10.0) -> None:
        self.redis = redis
        self.sessions = sessions
        self.interval_s = interval_s

    async def run_once(self) -> list[QueueState]:
        states = await queue_states(self.redis, self.sessions)
        now_ms = int(time.time() * 1000)
        for s in states:
            QUEUE_JOBS.labels(s.queue, "ready").set(s.depth.ready)
            QUEUE_JOBS.labels(s.queue, "deferred").set(s.depth.deferred)
            QUEUE_JOBS.labels(s.queue, "fair").set(s.depth.fair)
            QUEUE_JOBS.labels(s.queue, "running").set(s.running)
            QUEUE_OLDEST.labels(s.queue).set(s.oldest_age_s(now_ms))
            QUEUE_WORKERS.labels(s.queue).set(len(s.workers))
            QUEUE_CAPACITY.labels(s.queue).set(s.slots)
        lag_s, pending = await recorder_lag(self.redis)
        RECORDER_LAG.set(lag_s)
        RECORDER_PENDING.set(pending)
        return states
