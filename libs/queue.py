"""Queue runtime on arq: enqueue after commit, job wrapper, lifecycle events, cancel.

Contracts every service relies on:

- **Queues**: one per service, ``aistack:queue:<service>``; the service's worker
  (``python -m libs.worker <service>``) consumes only its own queue.
- **Enqueue after commit**: :func:`enqueue` registers an after-commit hook on the session, so a
  job never runs for data that was rolled back. :func:`enqueue_now` is for callers without a
  transaction.
- **At least once, so idempotent**: arq may run a job more than once (a worker dies mid-job, a
  shutdown interrupts it). Every job function must be safe to run again with the same
  arguments (upserts, ``ON CONFLICT DO NOTHING``, "already done" checks).
- **Idempotent job ids**: enqueueing a job id that is queued, running, or finished within the
  result retention window (:data:`RESULT_RETENTION_S`, 24 h after it finished) is a no-op; after
  that window the same id would run again.
- **Arguments are JSON**: args/kwargs must be JSON-serialisable (dicts, lists, str, numbers).
  They travel in the ``queued`` event so the jobs service can retry a job.
- **Metadata**: each job carries its request id, W3C trace context, org, user and service in a
  reserved ``_meta`` keyword; the worker-side wrapper (:func:`job`) restores them so the job's
  log lines carry the enqueuing request's request id and trace id.
- **Worker functions** must be wrapped with :func:`job` (it strips ``_meta``); a job receives a
  :class:`JobContext` (``progress()``, ``job_id``, ``attempt``, ``org_id``, ``state`` = the
  worker's resources such as ``db``), then its own args.
- **Lifecycle events** go to the Redis stream :data:`EVENTS_STREAM` (fields: see
  :class:`JobEvent`); the jobs service turns them into ``jobs.jobs`` rows.
- **Internal jobs** (``internal=True`` at enqueue, e.g. usage bookkeeping) carry the flag in
  their metadata and every event; the jobs service keeps them out of users' job lists.
- **Cancel** is cooperative: a flag in Redis checked before the job starts and at every
  ``progress()`` call (raising :class:`JobCancelled`), plus arq's abort for jobs blocked
  elsewhere. A job not yet picked up is removed from the queue outright.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import hashlib
import logging
import pickle
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import orjson
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.constants import expires_extra_ms as arq_expires_extra_ms
from arq.jobs import serialize_job
from arq.worker import Function, Retry
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, WatchError

from libs.context import get_request_id, new_request_id, request_id_var
from libs.telemetry import JOB_LATENCY, JOBS, extract_trace_context, inject_trace_headers

if TYPE_CHECKING:
    # only for types: publishing usage needs no SQLAlchemy (the llm loads it late)
    from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger("aistack.queue")

QUEUE_PREFIX = "aistack:queue:"
EVENTS_STREAM = "aistack:job-events"
EVENTS_MAXLEN = 100_000
CANCEL_KEY_PREFIX = "aistack:job-cancel:"
CANCEL_TTL_S = 7 * 24 * 3600
# how long a finished job's result (and so its id's dedupe) is kept; see worker_settings
RESULT_RETENTION_S = 24 * 3600
META_KWARG = "_meta"

JobStatus = Literal["queued", "running", "progress", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def queue_name(service: str) -> str:
    """The arq queue of a service: ``aistack:queue:<service>``."""
    return f"{QUEUE_PREFIX}{service}"


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


# ---------------------------------------------------------------------------------------------
# events


@dataclass
class JobEvent:
    """One lifecycle event on :data:`EVENTS_STREAM`; stream fields are strings ("" means unset).

    ``status`` is one of queued, running, progress, succeeded, failed, cancelled. ``attempt``
    is arq's try number (1 first). ``args``/``kwargs`` (JSON) are only sent with ``queued``.
    ``ts`` is the event's ISO-8601 UTC time; consumers order events of one job by
    ``(attempt, status rank)`` for the status and by ``ts`` for progress and message.
    """

    job_id: str
    service: str
    function: str
    status: str
    attempt: int = 1
    progress: int | None = None
    message: str | None = None
    error: str | None = None
    org_id: str | None = None
    user_id: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    queue: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    retry_of: str | None = None
    internal: bool = False
    ts: datetime = field(default_factory=_now)

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for XADD."""
        out: dict[str, str] = {
            "job_id": self.job_id,
            "service": self.service,
            "function": self.function,
            "status": self.status,
            "attempt": str(self.attempt),
            "ts": self.ts.isoformat(),
            "queue": self.queue or queue_name(self.service),
        }
        for name in ("org_id", "user_id", "request_id", "trace_id", "message", "error", "retry_of"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        if self.progress is not None:
            out["progress"] = str(self.progress)
        if self.internal:
            out["internal"] = "1"
        if self.args is not None:
            out["args"] = _json(self.args)
        if self.kwargs is not None:
            out["kwargs"] = _json(self.kwargs)
        return out

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> JobEvent:
        """Parse stream fields (bytes or str) back into an event; raises ValueError if invalid."""
        f = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }
        try:
            ts = datetime.fromisoformat(f["ts"])
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
            return cls(
                job_id=f["job_id"],
                service=f["service"],
                function=f["function"],
                status=f["status"],
                attempt=int(f.get("attempt") or 1),
                progress=int(f["progress"]) if f.get("progress") else None,
                message=f.get("message"),
                error=f.get("error"),
                org_id=f.get("org_id") or None,
                user_id=f.get("user_id") or None,
                request_id=f.get("request_id") or None,
                trace_id=f.get("trace_id") or None,
                queue=f.get("queue") or None,
                args=orjson.loads(f["args"]) if f.get("args") else None,
                kwargs=orjson.loads(f["kwargs"]) if f.get("kwargs") else None,
                retry_of=f.get("retry_of") or None,
                internal=f.get("internal") == "1",
                ts=ts,
            )
        except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"invalid job event: {exc}") from exc


# events whose XADD failed (Redis down or hung), sent again with the next event that gets
# through (or when a worker sees Redis back): the jobs service's fold is idempotent and
# order-independent, so a late or repeated event lands where it belongs; bounded (oldest
# dropped past it, logged) so a long outage cannot grow memory without limit
UNSENT_EVENTS_MAX = 10_000
_unsent: collections.deque[JobEvent] = collections.deque()


async def emit_event(redis: Redis, event: JobEvent) -> None:
    """XADD one lifecycle event (approximate MAXLEN); failures are logged, never raised.

    An event that could not be sent is kept and sent again after the next one that is (see
    :func:`resend_unsent_events`), so a job that ended during an outage is not shown running.
    """
    try:
        await redis.xadd(
            EVENTS_STREAM,
            event.to_fields(),  # type: ignore[arg-type]
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )
    except Exception as exc:
        log.warning(
            "could not emit %s event for job %s (kept to send again): %s",
            event.status,
            event.job_id,
            exc,
        )
        if len(_unsent) >= UNSENT_EVENTS_MAX:
            lost = _unsent.popleft()
            log.error("job event lost (too many unsent): %s %s", lost.status, lost.job_id)
        _unsent.append(event)
        return
    if _unsent:
        await resend_unsent_events(redis)


async def resend_unsent_events(redis: Redis) -> int:
    """Send the events kept by :func:`emit_event` (oldest first); returns how many went."""
    sent = 0
    while _unsent:
        batch = [_unsent.popleft() for _ in range(min(len(_unsent), 500))]
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for ev in batch:
                    pipe.xadd(
                        EVENTS_STREAM,
                        ev.to_fields(),  # type: ignore[arg-type]
                        maxlen=EVENTS_MAXLEN,
                        approximate=True,
                    )
                await pipe.execute()
        except Exception as exc:
            _unsent.extendleft(reversed(batch))  # kept, in order, for the next try
            log.warning("unsent job events still not sent (%d): %s", len(_unsent), exc)
            break
        sent += len(batch)
    if sent:
        log.info("sent %d job events kept during a Redis outage", sent)
    return sent


# ---------------------------------------------------------------------------------------------
# enqueue


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


def new_job_id() -> str:
    """A fresh job id."""
    return uuid.uuid4().hex


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


# ---------------------------------------------------------------------------------------------
# cancel


class JobCancelled(Exception):
    """Raised inside a job when cancellation was requested (before start or at a progress call)."""


def cancel_key(job_id: str) -> str:
    return f"{CANCEL_KEY_PREFIX}{job_id}"


async def is_cancel_requested(redis: Redis, job_id: str) -> bool:
    """Whether someone asked to cancel this job."""
    return bool(await redis.exists(cancel_key(job_id)))


async def cancel_job(
    redis: Redis, *, job_id: str, service: str
) -> Literal["dequeued", "signalled"]:
    """Request cancellation of a job.

    A job no worker has picked up yet is removed from its queue atomically (it will never run;
    returns ``"dequeued"``; the caller records the cancellation). Otherwise the cancel flag is set
    and arq's abort requested (``"signalled"``): the running job stops at its next
    ``progress()`` call, or where it awaits, and emits its own ``cancelled`` event.
    """
    queue = queue_name(service)
    await redis.set(cancel_key(job_id), b"1", ex=CANCEL_TTL_S)
    in_progress = in_progress_key_prefix + job_id
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(in_progress)
            running = await pipe.exists(in_progress)
            queued = await pipe.zscore(queue, job_id)
            if not running and queued is not None:
                pipe.multi()
                pipe.zrem(queue, job_id)
                pipe.delete(job_key_prefix + job_id)
                removed, _ = await pipe.execute()
                if removed:
                    return "dequeued"
            else:
                await pipe.reset()
        except WatchError:
            pass  # a worker picked it up meanwhile: signal it instead
    await redis.zadd(abort_jobs_ss, {job_id: int(time.time() * 1000)})
    return "signalled"


# ---------------------------------------------------------------------------------------------
# worker side


@dataclass
class JobContext:
    """What a job function receives as its first argument."""

    job_id: str
    service: str
    function: str
    attempt: int
    redis: Redis
    state: dict[str, Any]
    org_id: str | None = None
    user_id: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    internal: bool = False
    _last_progress: int = 0

    def _event(self, status: str, **extra: Any) -> JobEvent:
        return JobEvent(
            job_id=self.job_id,
            service=self.service,
            function=self.function,
            status=status,
            attempt=self.attempt,
            org_id=self.org_id,
            user_id=self.user_id,
            request_id=self.request_id,
            trace_id=self.trace_id,
            internal=self.internal,
            **extra,
        )

    async def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if cancellation was requested.

        Redis unreachable: the job goes on (a cancellation is asked for through Redis, so none
        can have been asked meanwhile; one asked before stays and is seen at a later call).
        """
        try:
            cancelled = await is_cancel_requested(self.redis, self.job_id)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("job %s: cancellation not checked (Redis: %s)", self.job_id, exc)
            return
        if cancelled:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    async def progress(self, pct: float, message: str | None = None) -> None:
        """Report progress (0-100) and a message; raises :class:`JobCancelled` if cancelled."""
        await self.check_cancelled()
        self._last_progress = max(0, min(100, int(pct)))
        await emit_event(
            self.redis, self._event("progress", progress=self._last_progress, message=message)
        )


JobFunction = Callable[..., Awaitable[Any]]

_DONE = "_aistack_done"
_JOB = "_aistack_job"


def job(
    fn: JobFunction | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_tries: int | None = None,
    keep_result: float | None = None,
    retry_outages: bool = False,
) -> Any:
    """Turn ``async def fn(ctx: JobContext, *args, **kwargs)`` into an arq function.

    The wrapper restores the request id and trace context (a CONSUMER span, child of the
    enqueuer's span), emits running/succeeded/failed/cancelled events, checks the cancel flag
    before running, and records ``aistack_jobs_total`` / ``aistack_job_duration_seconds``.

    ``retry_outages`` (for a job that is safe to run again, as an idempotent one is): when it
    fails because PostgreSQL is down or hung (:func:`libs.storage_errors.outage_of`), it is
    run again later (:func:`outage_retry_delay_s`: 5, 10, 20, 40, then every 60 s) rather than
    failed, until its last try (``max_tries``), which fails with the outage's error.
    """

    def decorate(func: JobFunction) -> Function:
        fname = name or func.__name__
        tracer = trace.get_tracer("aistack.queue")

        @functools.wraps(func)
        async def wrapper(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            meta: dict[str, Any] = kwargs.pop(META_KWARG, None) or {}
            service = meta.get("service") or ctx.get("service") or "unknown"
            job_id = str(ctx.get("job_id") or new_job_id())
            redis: Redis = ctx["redis"]
            rid_token = request_id_var.set(meta.get("request_id") or new_request_id())
            parent = extract_trace_context(meta.get("trace") or {})
            span = tracer.start_span(
                f"job {service}.{fname}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "arq",
                    "messaging.destination.name": queue_name(service),
                    "messaging.message.id": job_id,
                    "aistack.job.function": fname,
                },
            )
            ctx_token = otel_context.attach(trace.set_span_in_context(span, parent))
            jc = JobContext(
                job_id=job_id,
                service=service,
                function=fname,
                attempt=int(ctx.get("job_try") or 1),
                redis=redis,
                state=ctx,
                org_id=meta.get("org_id"),
                user_id=meta.get("user_id"),
                request_id=request_id_var.get(),
                trace_id=_current_trace_id(),
                internal=bool(meta.get("internal")),
            )
            ctx[_JOB] = jc
            started = time.perf_counter()
            outcome = "failed"
            try:
                try:
                    await jc.check_cancelled()
                    await emit_event(redis, jc._event("running", progress=jc._last_progress))
                    try:
                        result = await func(jc, *args, **kwargs)
                    except Exception as exc:
                        if retry_outages:
                            _retry_outage(jc, exc, max_tries or DEFAULT_MAX_TRIES)
                        raise
                except JobCancelled as exc:
                    outcome = "cancelled"
                    await emit_event(redis, jc._event("cancelled", message=str(exc)))
                    raise
                except asyncio.CancelledError:
                    if await asyncio.shield(is_cancel_requested(redis, job_id)):
                        outcome = "cancelled"
                        await asyncio.shield(
                            emit_event(redis, jc._event("cancelled", message="aborted"))
                        )
                    else:
                        # worker shutdown or timeout: arq retries or records it; see after_job_end
                        outcome = "interrupted"
                    raise
                except Retry:
                    outcome = "retrying"
                    # arq runs it again later as the next attempt
                    again = dataclasses.replace(jc._event("queued"), attempt=jc.attempt + 1)
                    await emit_event(redis, again)
                    raise
                except Exception as exc:
                    await emit_event(
                        redis,
                        jc._event("failed", error=f"{type(exc).__name__}: {exc}"[:2000]),
                    )
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR))
                    raise
                outcome = "succeeded"
                await emit_event(redis, jc._event("succeeded", progress=100))
                return result
            finally:
                elapsed = time.perf_counter() - started
                if outcome in ("succeeded", "failed", "cancelled"):
                    ctx[_DONE] = True
                    JOBS.labels(service, fname, outcome).inc()
                    JOB_LATENCY.labels(service, fname).observe(elapsed)
                # inside the job's span: this line carries the enqueuing request's trace id
                # and request id, which arq's own log lines cannot
                log.log(
                    logging.WARNING if outcome == "failed" else logging.INFO,
                    "job %s.%s %s %s in %.1f ms",
                    service,
                    fname,
                    job_id,
                    outcome,
                    elapsed * 1000,
                    extra={
                        "job_id": job_id,
                        "job_function": fname,
                        "job_outcome": outcome,
                        "job_attempt": jc.attempt,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
                span.set_attribute("aistack.job.outcome", outcome)
                span.end()
                otel_context.detach(ctx_token)
                request_id_var.reset(rid_token)

        wrapper.__qualname__ = fname
        return Function(
            name=fname,
            coroutine=wrapper,
            timeout_s=timeout,
            keep_result_s=keep_result,
            keep_result_forever=None,
            max_tries=max_tries,
        )

    if fn is not None:
        return decorate(fn)
    return decorate


# arq's default tries for a function that names none (libs.worker keeps it)
DEFAULT_MAX_TRIES = 5


def outage_retry_delay_s(attempt: int) -> float:
    """Seconds before try ``attempt + 1`` of a job that met a database outage."""
    return float(min(60, 5 * 2 ** (attempt - 1)))


def _retry_outage(jc: JobContext, exc: Exception, tries: int) -> None:
    """Raise arq's Retry when ``exc`` is a database outage and tries are left."""
    from libs.storage_errors import describe, outage_of

    if jc.attempt >= tries or outage_of(exc) != "database":
        return
    defer = outage_retry_delay_s(jc.attempt)
    log.warning(
        "job %s.%s %s: database unavailable (%s); try %d of %d, next in %.0f s",
        jc.service,
        jc.function,
        jc.job_id,
        describe(exc),
        jc.attempt,
        tries,
        defer,
    )
    raise Retry(defer=defer) from exc


async def after_job_end(ctx: dict[str, Any]) -> None:
    """arq hook: report a terminal state the wrapper could not (timeouts, aborts it missed)."""
    jc: JobContext | None = ctx.get(_JOB)
    if jc is None or ctx.get(_DONE):
        return
    raw = await jc.redis.get(result_key_prefix + jc.job_id)
    if not raw:
        return  # no result: arq will run it again (shutdown), the next attempt reports
    try:
        info = pickle.loads(raw)  # noqa: S301 - arq's own result record in our Redis
    except Exception:
        return
    if info.get("s"):
        return
    result = info.get("r")
    if isinstance(result, asyncio.CancelledError):
        event = jc._event("cancelled", message="aborted")
        status = "cancelled"
    else:
        error = (
            f"{type(result).__name__}: {result}"
            if isinstance(result, BaseException)
            else str(result)
        )
        event = jc._event("failed", error=error[:2000])
        status = "failed"
    await emit_event(jc.redis, event)
    JOBS.labels(jc.service, jc.function, status).inc()
