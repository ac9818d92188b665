"""Enqueue: after the transaction commits, or now; one job or many in one round trip."""

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
    EVENTS_MAXLEN,
    EVENTS_STREAM,
    META_KWARG,
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


def _build_meta(
    service: str,
    org_id: Any,
    user_id: Any,
    retry_of: str | None = None,
    internal: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "service": service,
        "request_id": get_request_id(),
        "trace": dict(inject_trace_headers({})),
        "org_id": str(org_id) if org_id is not None else None,
        "user_id": str(user_id) if user_id is not None else None,
        "enqueued_at": _now().isoformat(),
    }
    if retry_of:
        meta["retry_of"] = retry_of
    if internal:
        meta["internal"] = True
    return meta


async def _enqueue(
    pool: Redis,
    *,
    service: str,
    function: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    job_id: str,
    meta: dict[str, Any],
    defer_by: float | timedelta | None,
    expires: float | timedelta | None,
) -> str | None:
    job = PreparedJob(
        service=service,
        function=function,
        # round-trip through JSON so what runs is exactly what a retry would replay
        args=orjson.loads(_json(list(args))),
        kwargs=orjson.loads(_json(dict(kwargs))),
        job_id=job_id,
        meta=meta,
        defer_ms=_ms(defer_by) or 0,
        expires_ms=_ms(expires),
    )
    (queued,) = await enqueue_prepared(pool, [job])
    return queued


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
) -> str:
    """Enqueue ``function`` on ``service``'s queue once ``session`` commits; return the job id.

    Nothing is sent if the transaction rolls back. The request id and trace context are
    captured now (at the call), not at commit time. ``internal``: platform bookkeeping that
    users' job lists leave out.
    """
    jid = job_id or new_job_id()
    meta = _build_meta(service, org_id, user_id, retry_of, internal)
    kw = dict(kwargs or {})

    async def hook() -> None:
        await _enqueue(
            pool,
            service=service,
            function=function,
            args=args,
            kwargs=kw,
            job_id=jid,
            meta=meta,
            defer_by=defer_by,
            expires=expires,
        )

    from libs.db import after_commit

    after_commit(session, hook)
    return jid


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
) -> str | None:
    """Enqueue immediately (no transaction); return the job id, or None for a duplicate id."""
    return await _enqueue(
        pool,
        service=service,
        function=function,
        args=args,
        kwargs=dict(kwargs or {}),
        job_id=job_id or new_job_id(),
        meta=_build_meta(service, org_id, user_id, retry_of, internal),
        defer_by=defer_by,
        expires=expires,
    )


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
) -> PreparedJob:
    """Capture a job now (metadata from the current request) for :func:`enqueue_prepared`."""
    return PreparedJob(
        service=service,
        function=function,
        # round-trip through JSON so what runs is exactly what a retry would replay
        args=orjson.loads(_json(list(args))),
        kwargs=orjson.loads(_json(dict(kwargs or {}))),
        job_id=job_id or new_job_id(),
        meta=_build_meta(service, org_id, user_id, internal=internal),
    )


# arq's enqueue_job (WATCH, EXISTS, MULTI PSETEX ZADD EXEC) plus our ``queued`` event, for many
# jobs in one atomic round trip; a job whose id is queued or finished is skipped, as arq does.
# KEYS: events stream, then (job key, result key, queue) per job.
# ARGV: maxlen, then per job: job id, payload, expires ms, score, event fields as a JSON array
# [name, value, ...] (one argument rather than dozens: encoding arguments was the main cost)
_ENQUEUE_MANY = """
local out = {}
local a = 2
local n = (#KEYS - 1) / 3
for i = 1, n do
  local job_key, result_key, queue = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local job_id, payload, expires_ms, score = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local fields = cjson.decode(ARGV[a + 4])
  a = a + 5
  if redis.call('EXISTS', job_key, result_key) == 0 then
    redis.call('PSETEX', job_key, expires_ms, payload)
    redis.call('ZADD', queue, score, job_id)
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
# Redis names scripts by SHA-1 (not a security use)
_ENQUEUE_MANY_SHA = hashlib.sha1(_ENQUEUE_MANY.encode(), usedforsecurity=False).hexdigest()


async def enqueue_prepared(pool: Redis, jobs: Sequence[PreparedJob]) -> list[str | None]:
    """Enqueue prepared jobs now, in one round trip; per job its id, or None for a duplicate.

    Every enqueue goes through here: arq's job key and queue entry plus the ``queued``
    lifecycle event, written atomically (a job is never queued without its event), for one job
    or a batch (usage events on the hot path).
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
            None,
            enqueue_time_ms,
            serializer=serializer,
        )
        fields = JobEvent(
            job_id=job.job_id,
            service=job.service,
            function=job.function,
            status="queued",
            attempt=1,
            progress=0,
            org_id=job.meta.get("org_id"),
            user_id=job.meta.get("user_id"),
            request_id=job.meta.get("request_id"),
            trace_id=_trace_id_from_carrier(job.meta.get("trace") or {}),
            queue=queue,
            args=job.args,
            kwargs=job.kwargs,
            retry_of=job.meta.get("retry_of"),
            internal=bool(job.meta.get("internal")),
        ).to_fields()
        keys += [job_key_prefix + job.job_id, result_key_prefix + job.job_id, queue]
        flat: list[str] = []
        for name, value in fields.items():
            flat += (name, value)
        # as arq: run at enqueue time + defer; the job key outlives that by expires_extra_ms
        expires_ms = job.expires_ms or job.defer_ms + expires_extra_ms
        score = enqueue_time_ms + job.defer_ms
        argv += [job.job_id, payload, expires_ms, score, orjson.dumps(flat)]
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
