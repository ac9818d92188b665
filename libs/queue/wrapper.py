"""The job wrapper (:func:`job`): context, trace, lifecycle events, outage retries."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import pickle
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq.constants import result_key_prefix
from arq.worker import Function, Retry
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.asyncio import Redis

from libs.context import new_request_id, request_id_var
from libs.queue.cancel import JobCancelled, is_cancel_requested
from libs.queue.context import JobContext
from libs.queue.events import emit_event
from libs.queue.names import META_KWARG, _current_trace_id, new_job_id, queue_name
from libs.telemetry import JOB_LATENCY, JOBS, extract_trace_context

log = logging.getLogger("aistack.queue")


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
