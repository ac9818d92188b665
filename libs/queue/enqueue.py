"""Enqueue: after the transaction commits, or now; one job or many in one round trip.

Where a job goes: an organization's job (``org_id`` set, not ``internal``, not deferred)
waits in its organization's fair queue until a worker dispatches it (:mod:`libs.queue.fair`:
per-organization round robin by priority, per-type concurrency limits); any other job goes
straight onto the service's arq queue, in time order. Either way the queue's workers are woken
at once (pub/sub on :func:`libs.queue.names.wake_channel`) rather than at their next poll.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms as arq_expires_extra_ms
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from opentelemetry import trace
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from libs.context import get_request_id
from libs.queue.events import JobEvent
from libs.queue.names import (
    _NO_SPAN,
    _NO_TRACE,
    _TRACEPARENT,
    DEFAULT_PRIORITY,
    EVENTS_MAXLEN,
    EVENTS_STREAM,
    META_KWARG,
    PRIORITIES,
    Priority,
    _json,
    _now,
    new_job_id,
    queue_name,
)
from libs.telemetry import extract_trace_context, inject_trace_headers

if TYPE_CHECKING:
    # only for types: publishing usage needs no SQLAlchemy (the llm loads it late)
    from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger("aistack.queue")

# an organization's jobs without one: the fair queues' member for platform work
NO_ORG = "-"


def _build_meta(
    service: str,
    org_id: Any,
    user_id: Any,
    retry_of: str | None = None,
    internal: bool = False,
    *,
    priority: Priority | None = None,
    parent_id: str | None = None,
    trace_carrier: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "service": service,
        "request_id": request_id or get_request_id(),
        "trace": dict(trace_carrier) if trace_carrier else dict(inject_trace_headers({})),
        "org_id": str(org_id) if org_id is not None else None,
        "user_id": str(user_id) if user_id is not None else None,
        "enqueued_at": _now().isoformat(),
    }
    if retry_of:
        meta["retry_of"] = retry_of
    if internal:
        meta["internal"] = True
    if priority and priority != DEFAULT_PRIORITY:
        if priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}")
        meta["priority"] = priority
    if parent_id:
        meta["parent_id"] = parent_id
    return meta


def _ms(value: float | timedelta | None) -> int | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    return round(seconds * 1000)


def _trace_id_from_carrier(carrier: Mapping[str, str]) -> str | None:
    # a W3C traceparent (what inject_trace_headers writes with the default propagators) is
    # read directly: extracting a whole context per queued event was a visible share of every
    # usage event; anything else goes through the configured propagators
    parent = carrier.get("traceparent")
    if parent is not None:
        m = _TRACEPARENT.fullmatch(parent)
        if m is not None:
            trace_id, span_id = m.groups()
            # all zeros: an invalid context, as the propagator would find it
            return None if trace_id == _NO_TRACE or span_id == _NO_SPAN else trace_id
    span_ctx = trace.get_current_span(extract_trace_context(carrier)).get_span_context()
    return format(span_ctx.trace_id, "032x") if span_ctx.is_valid else None


@dataclass
class PreparedJob:
    """A job captured where it is decided (request id and trace of that moment), sent later."""

    service: str
    function: str
    args: list[Any]
    kwargs: dict[str, Any]
    job_id: str
    meta: dict[str, Any]
    # arq's _defer_by and _expires, in milliseconds
    defer_ms: int = 0
    expires_ms: int | None = None
    # the try it starts at (a job enqueued again after Redis lost it keeps counting)
    attempt: int = 1

    @property
    def fair(self) -> bool:
        """Whether it waits in its organization's fair queue (see the module docstring)."""
        return bool(self.meta.get("org_id")) and not self.meta.get("internal") and not self.defer_ms


def prepare_job(
    *,
    service: str,
    function: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    org_id: Any = None,
    user_id: Any = None,
    internal: bool = False,
    retry_of: str | None = None,
    priority: Priority | None = None,
    parent_id: str | None = None,
    defer_by: float | timedelta | None = None,
    expires: float | timedelta | None = None,
    attempt: int = 1,
    trace_carrier: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> PreparedJob:
    """Capture a job now (metadata from the current request) for :func:`enqueue_prepared`.

    ``trace_carrier`` / ``request_id``: those of another moment (a job enqueued again keeps
    the ones it was first enqueued with)."""
    return PreparedJob(
        service=service,
        function=function,
        # round-trip through JSON so what runs is exactly what a retry would replay
        args=orjson.loads(_json(list(args))),
        kwargs=orjson.loads(_json(dict(kwargs or {}))),
        job_id=job_id or new_job_id(),
        meta=_build_meta(
            service,
            org_id,
            user_id,
            retry_of,
            internal,
            priority=priority,
            parent_id=parent_id,
            trace_carrier=trace_carrier,
            request_id=request_id,
        ),
        defer_ms=_ms(defer_by) or 0,
        expires_ms=_ms(expires),
        attempt=attempt,
    )


async def enqueue(
    session: AsyncSession,
    pool: Redis,
    *,
    service: str,
    function: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    org_id: Any = None,
    user_id: Any = None,
    retry_of: str | None = None,
    defer_by: float | timedelta | None = None,
    expires: float | timedelta | None = None,
    internal: bool = False,
    priority: Priority | None = None,
    parent_id: str | None = None,
) -> str:
    """Enqueue ``function`` on ``service``'s queue once ``session`` commits; return the job id.

    Nothing is sent if the transaction rolls back. The request id and trace context are
    captured now (at the call), not at commit time. ``internal``: platform bookkeeping that
    users' job lists leave out. ``priority``: high, normal or low among the organization's
    jobs and the others' (jobs without an organization run in time order).
    """
    job = prepare_job(
        service=service,
        function=function,
        args=args,
        kwargs=kwargs,
        job_id=job_id,
        org_id=org_id,
        user_id=user_id,
        retry_of=retry_of,
        internal=internal,
        priority=priority,
        parent_id=parent_id,
        defer_by=defer_by,
        expires=expires,
    )

    async def hook() -> None:
        await enqueue_prepared(pool, [job])

    from libs.db import after_commit

    after_commit(session, hook)
    return job.job_id


async def enqueue_now(
    pool: Redis,
    *,
    service: str,
    function: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    org_id: Any = None,
    user_id: Any = None,
    retry_of: str | None = None,
    defer_by: float | timedelta | None = None,
    expires: float | timedelta | None = None,
    internal: bool = False,
    priority: Priority | None = None,
    parent_id: str | None = None,
) -> str | None:
    """Enqueue immediately (no transaction); return the job id, or None for a duplicate id."""
    job = prepare_job(
        service=service,
        function=function,
        args=args,
        kwargs=kwargs,
        job_id=job_id,
        org_id=org_id,
        user_id=user_id,
        retry_of=retry_of,
        internal=internal,
        priority=priority,
        parent_id=parent_id,
        defer_by=defer_by,
        expires=expires,
    )
    (queued,) = await enqueue_prepared(pool, [job])
    return queued


# arq's enqueue_job (WATCH, EXISTS, MULTI PSETEX ZADD EXEC) plus our ``queued`` event, for many
# jobs in one atomic round trip; a job whose id is queued or finished is skipped, as arq does.
# A fair job (member not "") goes to its organization's fair queue instead of arq's (the sub-
# queue of its priority tier and member "<org>|<function>", the tier's ring of members, the
# queue's waiting set: see libs.queue.fair). Every queue that got a job is woken once.
# KEYS: events stream, then (job key, result key, queue) per job.
# ARGV: maxlen, then per job: job id, payload, expires ms, score, event fields as a JSON array
# [name, value, ...] (one argument rather than dozens: encoding arguments was the main cost),
# fair member ("" for arq's queue directly), priority tier
_ENQUEUE_MANY = """
local out = {}
local woken = {}
local a = 2
local n = (#KEYS - 1) / 3
for i = 1, n do
  local job_key, result_key, queue = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local job_id, payload, expires_ms, score = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local fields = cjson.decode(ARGV[a + 4])
  local member, tier = ARGV[a + 5], ARGV[a + 6]
  a = a + 7
  if redis.call('EXISTS', job_key, result_key) == 0 then
    redis.call('PSETEX', job_key, expires_ms, payload)
    if member == '' then
      redis.call('ZADD', queue, score, job_id)
    else
      local prefix = queue .. ':fair:'
      -- first in, first out within a member, also for jobs enqueued in the same millisecond
      local order = redis.call('INCR', prefix .. 'n')
      redis.call('ZADD', prefix .. 'q:' .. tier .. ':' .. member, order, job_id)
      redis.call('ZADD', prefix .. 'waiting', score, job_id)
      local ring = prefix .. 'ring:' .. tier
      if not redis.call('ZSCORE', ring, member) then
        -- a newcomer is served before the members already served since it last waited
        local seq = tonumber(redis.call('GET', prefix .. 'seq') or '0')
        redis.call('ZADD', ring, seq - 0.5, member)
      end
    end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
    woken[queue] = true
    out[i] = 1
  else
    out[i] = 0
  end
end
for queue, _ in pairs(woken) do
  redis.call('PUBLISH', queue .. ':wake', '1')
end
return out
"""
# Redis names scripts by SHA-1 (not a security use)
_ENQUEUE_MANY_SHA = hashlib.sha1(_ENQUEUE_MANY.encode(), usedforsecurity=False).hexdigest()


def fair_member(org_id: str | None, function: str) -> str:
    """A fair queue's member: one organization's jobs of one function."""
    return f"{org_id or NO_ORG}|{function}"


def priority_tier(priority: str | None) -> int:
    """0 for high, 1 for normal, 2 for low."""
    try:
        return PRIORITIES.index(priority or DEFAULT_PRIORITY)
    except ValueError:
        return 1


def queued_event(job: PreparedJob) -> JobEvent:
    """The ``queued`` event of a prepared job (what :func:`enqueue_prepared` sends with it)."""
    carrier = job.meta.get("trace") or {}
    return JobEvent(
        job_id=job.job_id,
        service=job.service,
        function=job.function,
        status="queued",
        attempt=job.attempt,
        progress=0,
        org_id=job.meta.get("org_id"),
        user_id=job.meta.get("user_id"),
        request_id=job.meta.get("request_id"),
        trace_id=_trace_id_from_carrier(carrier),
        queue=queue_name(job.service),
        args=job.args,
        kwargs=job.kwargs,
        retry_of=job.meta.get("retry_of"),
        internal=bool(job.meta.get("internal")),
        parent_id=job.meta.get("parent_id"),
        priority=job.meta.get("priority"),
        traceparent=carrier.get("traceparent"),
        run_at=_now() + timedelta(milliseconds=job.defer_ms) if job.defer_ms else None,
    )


async def enqueue_prepared(pool: Redis, jobs: Sequence[PreparedJob]) -> list[str | None]:
    """Enqueue prepared jobs now, in one round trip; per job its id, or None for a duplicate.

    Every enqueue goes through here: arq's job key and queue entry (or fair queue entry) plus
    the ``queued`` lifecycle event, written atomically (a job is never queued without its
    event), for one job or a batch (usage events on the hot path).
    """
    if not jobs:
        return []
    # what as_arq(pool) would use, without building a client per call
    serializer = pool.job_serializer if isinstance(pool, ArqRedis) else None
    expires_extra_ms = pool.expires_extra_ms if isinstance(pool, ArqRedis) else arq_expires_extra_ms
    keys: list[str] = [EVENTS_STREAM]
    argv: list[Any] = [EVENTS_MAXLEN]
    enqueue_time_ms = int(time.time() * 1000)
    for job in jobs:
        queue = queue_name(job.service)
        payload = serialize_job(
            job.function,
            tuple(job.args),
            {META_KWARG: job.meta, **job.kwargs},
            job.attempt if job.attempt > 1 else None,
            enqueue_time_ms,
            serializer=serializer,
        )
        fields = queued_event(job).to_fields()
        keys += [job_key_prefix + job.job_id, result_key_prefix + job.job_id, queue]
        flat: list[str] = []
        for name, value in fields.items():
            flat += (name, value)
        # as arq: run at enqueue time + defer; the job key outlives that by expires_extra_ms
        expires_ms = job.expires_ms or job.defer_ms + expires_extra_ms
        score = enqueue_time_ms + job.defer_ms
        member = fair_member(job.meta.get("org_id"), job.function) if job.fair else ""
        tier = priority_tier(job.meta.get("priority"))
        argv += [job.job_id, payload, expires_ms, score, orjson.dumps(flat), member, tier]
    try:
        flags = await pool.evalsha(_ENQUEUE_MANY_SHA, len(keys), *keys, *argv)  # type: ignore[misc]
    except NoScriptError:
        flags = await pool.eval(_ENQUEUE_MANY, len(keys), *keys, *argv)  # type: ignore[misc]
    out: list[str | None] = []
    for job, flag in zip(jobs, flags, strict=True):
        if flag:
            out.append(job.job_id)
        else:
            log.info("job %s already queued or recently finished; not enqueued again", job.job_id)
            out.append(None)
    return out
