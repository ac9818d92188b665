"""The job wrapper (:func:`job`): context, trace, lifecycle events, retries and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import pickle
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from arq.constants import result_key_prefix
from arq.worker import Function, Retry
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel
from redis.asyncio import Redis

from libs.context import new_request_id, request_id_var
from libs.queue.cancel import JobCancelled, is_cancel_requested
from libs.queue.context import CANCELLED_CTX, SINK_CTX, JobContext
from libs.queue.events import emit_event
from libs.queue.fair import release_slot, slot_key
from libs.queue.metrics import JOBS_STARTED
from libs.queue.names import (
    DEFAULT_PRIORITY,
    META_KWARG,
    Priority,
    _current_trace_id,
    _now,
    new_job_id,
    queue_name,
)
from libs.queue.types import JobSpec, Record, RetryPolicy, args_model_for, records
from libs.telemetry import JOB_LATENCY, JOBS, extract_trace_context

log = logging.getLogger("aistack.queue")


JobFunction = Callable[..., Awaitable[Any]]

_DONE = "_aistack_done"
_JOB = "_aistack_job"
# arq's default tries for a function that names none (libs.worker keeps it)
DEFAULT_MAX_TRIES = 5
# what a failed job's record keeps of its traceback
TRACEBACK_FRAMES = 12
TRACEBACK_CHARS = 4000
# jobs of this process that are running, by id (the worker renews their leases)
RUNNING: dict[str, JobContext] = {}


@dataclass
class DeclaredJob(Function):
    """An arq function with its job type's declaration (:class:`libs.queue.types.JobSpec`)."""

    spec: JobSpec | None = None


def traceback_summary(exc: BaseException) -> str:
    """The last frames of ``exc``'s traceback and its message, bounded for a job record."""
    lines = traceback.format_exception(exc, limit=-TRACEBACK_FRAMES)
    text = "".join(lines)
    return text if len(text) <= TRACEBACK_CHARS else "…" + text[-TRACEBACK_CHARS:]


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def job(
    fn: JobFunction | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_tries: int | None = None,
    keep_result: float | None = None,
    retry_outages: bool = False,
    retry: RetryPolicy | None = None,
    description: str | None = None,
    user_startable: bool = False,
    scope: str | None = None,
    schedulable: bool = False,
    concurrency: int | None = None,
    priority: Priority = DEFAULT_PRIORITY,
    record: Record = "all",
    internal: bool = False,
    args_model: type[BaseModel] | None = None,
) -> Any:
    """Turn ``async def fn(ctx: JobContext, *args, **kwargs)`` into a declared arq function.

    The wrapper restores the request id and trace context (a CONSUMER span, child of the
    enqueuer's span), emits running/succeeded/failed/cancelled/dead events, checks the cancel
    flag before running, and records ``aistack_jobs_total`` / ``aistack_job_duration_seconds``.

    ``retry``: the job type's :class:`libs.queue.types.RetryPolicy`. A failure it retries runs
    again after the policy's backoff (a ``queued`` event for the next attempt carries the
    error); past its last try the job is a dead letter (``dead``). Without one a failure is
    final (``failed``), and only a worker that dies mid-job has it run again, up to
    ``max_tries`` (arq's 5 by default).

    ``retry_outages`` (for a job that is safe to run again, as an idempotent one is): when it
    fails because PostgreSQL is down or hung (:func:`libs.storage_errors.outage_of`), it is
    run again later (:func:`outage_retry_delay_s`: 5, 10, 20, 40, then every 60 s) rather than
    failed, until its last try (``max_tries``), which fails with the outage's error.

    The rest declares the job type (:class:`libs.queue.types.JobSpec`): ``description``
    (default: the docstring's first line), ``user_startable`` (with ``scope``),
    ``schedulable``, ``concurrency`` (per organization), ``priority``, ``record`` (``all``,
    ``failures`` or a share), ``internal``, ``args_model`` (default: built from the signature).
    ``timeout`` is enforced inside the wrapper, so a timeout is a failure its policy may retry.
    """

    def decorate(func: JobFunction) -> DeclaredJob:
        fname = name or func.__name__
        tracer = trace.get_tracer("aistack.queue")
        tries = retry.max_tries if retry is not None else max_tries
        policy = retry or RetryPolicy(max_tries=tries or DEFAULT_MAX_TRIES, retry_on=())
        doc = (func.__doc__ or "").strip().split("\n\n")[0]
        spec = JobSpec(
            name=fname,
            description=description if description is not None else " ".join(doc.split()),
            user_startable=user_startable,
            scope=scope,
            schedulable=schedulable,
            retry=policy,
            concurrency=concurrency,
            priority=priority,
            record=record,
            internal=internal,
            timeout_s=timeout,
            args_model=args_model or args_model_for(fname, func),
        )

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
            org_id = meta.get("org_id")
            jc = JobContext(
                job_id=job_id,
                service=service,
                function=fname,
                attempt=int(ctx.get("job_try") or 1),
                redis=redis,
                state=ctx,
                org_id=org_id,
                user_id=meta.get("user_id"),
                request_id=request_id_var.get(),
                trace_id=_current_trace_id(),
                internal=bool(meta.get("internal")),
                spec=spec,
                recorded=records(spec.record, job_id),
                parent_id=meta.get("parent_id"),
                priority=meta.get("priority"),
                worker_id=ctx.get("worker_id"),
                slot=slot_key(queue_name(service), org_id, fname) if concurrency else None,
                max_tries=policy.max_tries,
                sink=ctx.get(SINK_CTX),
            )
            ctx[_JOB] = jc
            RUNNING[job_id] = jc
            JOBS_STARTED.labels(service, fname).inc()
            started = time.perf_counter()
            outcome = "failed"
            try:
                try:
                    if CANCELLED_CTX not in ctx:
                        await jc.check_cancelled()
                    elif ctx[CANCELLED_CTX]:  # the worker's start read it already
                        raise JobCancelled(f"job {job_id} was cancelled")
                    if jc.recorded:
                        await jc.report(
                            jc._event(
                                "running",
                                progress=jc._last_progress,
                                worker=jc.worker_id,
                                max_tries=policy.max_tries,
                            ),
                            end=False,
                        )
                    try:
                        async with asyncio.timeout(timeout):
                            result = await func(jc, *args, **kwargs)
                    except (JobCancelled, Retry):
                        raise
                    except Exception as exc:
                        if retry_outages:
                            _retry_outage(jc, exc, tries or DEFAULT_MAX_TRIES)
                        if policy.retries(exc) and jc.attempt < policy.max_tries:
                            outcome = "retrying"
                            await _retry_later(jc, exc, policy, args, kwargs)
                        raise
                except JobCancelled as exc:
                    outcome = "cancelled"
                    await jc.report(jc._event("cancelled", message=str(exc)), end=True)
                    raise
                except asyncio.CancelledError:
                    if await asyncio.shield(is_cancel_requested(redis, job_id)):
                        outcome = "cancelled"
                        await asyncio.shield(
                            jc.report(jc._event("cancelled", message="aborted"), end=True)
                        )
                    else:
                        # worker shutdown or arq's timeout: arq runs it again or records it
                        # (see after_job_end)
                        outcome = "interrupted"
                    raise
                except Retry:
                    if outcome != "retrying":  # the job asked for it itself
                        outcome = "retrying"
                        again = dataclasses.replace(jc._event("queued"), attempt=jc.attempt + 1)
                        await jc.report(again, end=True)
                    JOBS.labels(service, fname, "retried").inc()
                    raise
                except Exception as exc:
                    # out of tries under a policy that retries it: a dead letter
                    outcome = "dead" if policy.retries(exc) else "failed"
                    await jc.report(
                        jc._event(
                            outcome,
                            error=_error(exc),
                            traceback=traceback_summary(exc),
                            args=list(args),
                            kwargs=dict(kwargs),
                        ),
                        end=True,
                    )
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR))
                    raise
                outcome = "succeeded"
                if jc.recorded:
                    await jc.report(jc._event("succeeded", progress=100), end=True)
                return result
            finally:
                elapsed = time.perf_counter() - started
                RUNNING.pop(job_id, None)
                if jc.slot is not None and outcome != "interrupted":
                    if jc.sink is not None:
                        await jc.sink.release(jc.slot)
                    else:
                        with contextlib.suppress(Exception):
                            await asyncio.shield(release_slot(redis, jc.slot, job_id))
                if outcome in ("succeeded", "failed", "cancelled", "dead"):
                    ctx[_DONE] = True
                    JOBS.labels(service, fname, outcome).inc()
                    JOB_LATENCY.labels(service, fname).observe(elapsed)
                # inside the job's span: this line carries the enqueuing request's trace id
                # and request id, which arq's own log lines cannot
                log.log(
                    logging.WARNING if outcome in ("failed", "dead") else logging.INFO,
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
        return DeclaredJob(
            name=fname,
            coroutine=wrapper,
            # the wrapper enforces the timeout; arq's own (a little later) is the backstop
            timeout_s=timeout + 5 if timeout is not None else None,
            # a finished job's result is what tells a job that ended apart from a lost one
            keep_result_s=keep_result,
            keep_result_forever=None,
            max_tries=tries,
            spec=spec,
        )

    if fn is not None:
        return decorate(fn)
    return decorate


async def _retry_later(
    jc: JobContext,
    exc: Exception,
    policy: RetryPolicy,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Raise arq's Retry with the policy's backoff; the next attempt's ``queued`` event says
    why and when."""
    delay = policy.delay_s(jc.attempt)
    log.warning(
        "job %s.%s %s failed (%s); try %d of %d, next in %.1f s",
        jc.service,
        jc.function,
        jc.job_id,
        _error(exc),
        jc.attempt,
        policy.max_tries,
        delay,
    )
    again = dataclasses.replace(
        jc._event(
            "queued",
            error=_error(exc),
            traceback=traceback_summary(exc),
            run_at=_now() + timedelta(seconds=delay),
            max_tries=policy.max_tries,
        ),
        attempt=jc.attempt + 1,
    )
    await jc.report(again, end=True)
    raise Retry(defer=delay) from exc


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
