"""Names every part of the queue runtime shares: queues, keys, statuses, ids."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from arq.connections import ArqRedis
from opentelemetry import trace
from redis.asyncio import Redis

QUEUE_PREFIX = "aistack:queue:"
EVENTS_STREAM = "aistack:job-events"
EVENTS_MAXLEN = 100_000
CANCEL_KEY_PREFIX = "aistack:job-cancel:"
CANCEL_TTL_S = 7 * 24 * 3600
# how long a finished job's result (and so its id's dedupe) is kept; see worker_settings
RESULT_RETENTION_S = 24 * 3600
META_KWARG = "_meta"

JobStatus = Literal["queued", "running", "progress", "succeeded", "failed", "cancelled", "dead"]
# dead: out of tries under the job type's retry policy (a dead letter)
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "dead"})

# a job's priority: higher tiers are dispatched first (see libs.queue.fair)
Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
DEFAULT_PRIORITY: Priority = "normal"

# the job types and periodic schedules the workers declare (libs.queue.types), published by
# every worker at start and every minute: field "<service>:<name>", value the JSON declaration
TYPES_KEY = "aistack:job-types"
SCHEDULES_KEY = "aistack:job-schedules"
# a live worker's heartbeat: aistack:worker:<worker id> (JSON, expires unless renewed)
WORKER_KEY_PREFIX = "aistack:worker:"
# a job someone watches (an SSE client): its events are also logged on its own stream
WATCH_KEY_PREFIX = "aistack:job-watch:"
JOB_LOG_PREFIX = "aistack:job-log:"


def queue_name(service: str) -> str:
    """The arq queue of a service: ``aistack:queue:<service>``."""
    return f"{QUEUE_PREFIX}{service}"


def wake_channel(queue: str) -> str:
    """The pub/sub channel a queue's workers listen on to start new work at once."""
    return f"{queue}:wake"


def fair_prefix(queue: str) -> str:
    """Prefix of a queue's fair-dispatch keys (libs.queue.fair)."""
    return f"{queue}:fair:"


def as_arq(redis: Redis) -> ArqRedis:
    """An ArqRedis sharing ``redis``'s connection pool (so apps keep one client)."""
    if isinstance(redis, ArqRedis):
        return redis
    return ArqRedis(pool_or_conn=redis.connection_pool)


def _now() -> datetime:
    return datetime.now(UTC)


# version 00 of W3C trace context: version-trace id-parent id-flags, lower-case hex
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def new_job_id() -> str:
    """A fresh job id."""
    return uuid.uuid4().hex
