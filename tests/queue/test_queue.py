from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from arq.worker import Retry
from opentelemetry import trace
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from libs.context import request_id_var
from libs.db import make_session_factory, session_scope
from libs.embedded import free_port
from libs.logging import JsonFormatter
from libs.queue import (
    JobContext,
    cancel_job,
    cancel_key,
    enqueue,
    enqueue_now,
    job,
    outage_retry_delay_s,
    queue_name,
)
from libs.telemetry import JOBS, setup_tracing
from libs.testing import Infra
from libs.worker import worker_settings
from tests.support.workers import events_for, make_worker, run_burst

SERVICE = "qtest"
calls: list[Any] = []


@job
async def record(ctx: JobContext, value: str, *, extra: int = 0) -> str:
    calls.append((ctx.job_id, value, extra))
    return value


@job
async def steps(ctx: JobContext, n: int) -> int:
    for i in range(n):
        await ctx.progress((i + 1) * 100 / n, f"step {i + 1}")
    return n


@job
async def boom(ctx: JobContext) -> None:
    raise ValueError("bad input")


class _Capture(logging.Handler):
    """Formats at emit time, inside the job, where the context vars are live."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.setFormatter(JsonFormatter("test"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@job
async def chatty(ctx: JobContext) -> None:
    logging.getLogger("tests.job").info("inside the job")


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


async def test_enqueue_in_rolled_back_transaction_never_runs(
    infra: Infra, engine: AsyncEngine, redis: Redis
) -> None:
    factory = make_session_factory(engine)
    with pytest.raises(RuntimeError):
        async with session_scope(factory) as session:
            await enqueue(session, redis, service=SERVICE, function="record", args=["lost"])
            raise RuntimeError("handler failed")
    assert await redis.zcard(queue_name(SERVICE)) == 0

    async with session_scope(factory) as session:
        jid = await enqueue(session, redis, service=SERVICE, function="record", args=["kept"])
        # nothing is sent before the commit
        assert await redis.zcard(queue_name(SERVICE)) == 0
    assert await redis.zscore(queue_name(SERVICE), jid) is not None

    await run_burst(infra.redis_url, SERVICE, [record])
    assert [c[1] for c in calls] == ["kept"]


async def test_duplicate_job_id_runs_once(infra: Infra, redis: Redis) -> None:
    first = await enqueue_now(
        redis, service=SERVICE, function="record", args=["a"], kwargs={"extra": 1}, job_id="dup-1"
    )
    second = await enqueue_now(
        redis, service=SERVICE, function="record", args=["b"], job_id="dup-1"
    )
    assert first == "dup-1" and second is None
    await run_burst(infra.redis_url, SERVICE, [record])
    # the result is retained, so the same id stays a no-op after the job finished
    again = await enqueue_now(redis, service=SERVICE, function="record", args=["c"], job_id="dup-1")
    assert again is None
    await run_burst(infra.redis_url, SERVICE, [record])
    assert calls == [("dup-1", "a", 1)]


async def test_lifecycle_and_progress_events(infra: Infra, redis: Redis) -> None:
    jid = await enqueue_now(redis, service=SERVICE, function="steps", args=[4], org_id="o1")
    assert jid
    await run_burst(infra.redis_url, SERVICE, [steps])
    evs = await events_for(redis, jid)
    assert [e.status for e in evs] == [
        "queued",
        "running",
        "progress",
        "progress",
        "progress",
        "progress",
        "succeeded",
    ]
    assert evs[0].args == [4] and evs[0].function == "steps" and evs[0].org_id == "o1"
    assert [e.progress for e in evs[2:6]] == [25, 50, 75, 100]
    assert evs[3].message == "step 2"
    assert all(e.attempt == 1 and e.service == SERVICE for e in evs)


async def test_failure_is_reported(infra: Infra, redis: Redis) -> None:
    before = JOBS.labels(SERVICE, "boom", "failed")._value.get()
    jid = await enqueue_now(redis, service=SERVICE, function="boom")
    assert jid
    await run_burst(infra.redis_url, SERVICE, [boom])
    evs = await events_for(redis, jid)
    assert evs[-1].status == "failed"
    assert evs[-1].error == "ValueError: bad input"
    assert JOBS.labels(SERVICE, "boom", "failed")._value.get() == before + 1


async def test_cancel_before_start(infra: Infra, redis: Redis) -> None:
    jid = await enqueue_now(redis, service=SERVICE, function="record", args=["x"])
    assert jid
    assert await cancel_job(redis, job_id=jid, service=SERVICE) == "dequeued"
    # a job whose flag is set but which is still queued (e.g. flag set by another path)
    jid2 = await enqueue_now(redis, service=SERVICE, function="record", args=["y"])
    assert jid2
    await redis.set(cancel_key(jid2), b"1")
    await run_burst(infra.redis_url, SERVICE, [record])
    assert calls == []
    assert [e.status for e in await events_for(redis, jid2)] == ["queued", "cancelled"]


async def test_cancel_while_running(infra: Infra, redis: Redis) -> None:
    started = asyncio.Event()
    progressed: list[int] = []

    @job(name="long")
    async def long(ctx: JobContext) -> None:
        for i in range(1000):
            await ctx.progress(i / 10)
            progressed.append(i)
            started.set()
            await asyncio.sleep(0.01)

    jid = await enqueue_now(redis, service=SERVICE, function="long")
    assert jid
    worker = make_worker(infra.redis_url, SERVICE, [long])
    task = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert await cancel_job(redis, job_id=jid, service=SERVICE) == "signalled"
        await asyncio.wait_for(task, 10)
    finally:
        await worker.close()
    assert len(progressed) < 1000
    evs = await events_for(redis, jid)
    assert evs[-1].status == "cancelled"
    assert "succeeded" not in {e.status for e in evs}


async def test_request_id_and_trace_reach_job_logs_and_events(infra: Infra, redis: Redis) -> None:
    setup_tracing("test")
    capture = _Capture()
    job_log = logging.getLogger("tests.job")
    job_log.addHandler(capture)
    job_log.setLevel(logging.INFO)
    token = request_id_var.set("req-abc-123")
    try:
        with trace.get_tracer("test").start_as_current_span("POST /thing") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            jid = await enqueue_now(redis, service=SERVICE, function="chatty")
    finally:
        request_id_var.reset(token)
    assert jid
    # the worker runs outside the request's context
    await run_burst(infra.redis_url, SERVICE, [chatty])
    logging.getLogger("tests.job").removeHandler(capture)
    [line] = [x for x in capture.lines if x["msg"] == "inside the job"]
    assert line["request_id"] == "req-abc-123"
    assert line["trace_id"] == trace_id
    evs = await events_for(redis, jid)
    assert {e.request_id for e in evs} == {"req-abc-123"}
    assert {e.trace_id for e in evs} == {trace_id}


async def test_worker_with_no_functions_runs_idle(infra: Infra, redis: Redis) -> None:
    opts = worker_settings("idle", [], redis_url=infra.redis_url)
    assert [f.name for f in opts["functions"]] == ["aistack_ping"]
    assert opts["queue_name"] == "aistack:queue:idle"
    jid = await enqueue_now(redis, service="idle", function="aistack_ping")
    worker = await run_burst(infra.redis_url, "idle", [])
    assert jid and worker.jobs_complete == 1


@job(timeout=0.2)
async def sleepy(ctx: JobContext) -> None:
    await asyncio.sleep(30)


async def test_timeout_is_reported_as_failed(infra: Infra, redis: Redis) -> None:
    jid = await enqueue_now(redis, service=SERVICE, function="sleepy")
    assert jid
    await run_burst(infra.redis_url, SERVICE, [sleepy])
    evs = await events_for(redis, jid)
    assert [e.status for e in evs] == ["queued", "running", "failed"]
    assert (evs[-1].error or "").startswith("TimeoutError")


@job
async def again(ctx: JobContext) -> int:
    calls.append(ctx.attempt)
    if ctx.attempt == 1:
        raise Retry(defer=0)
    return ctx.attempt


async def test_arq_retry_is_a_new_attempt(infra: Infra, redis: Redis) -> None:
    jid = await enqueue_now(redis, service=SERVICE, function="again")
    assert jid
    await run_burst(infra.redis_url, SERVICE, [again])
    assert calls == [1, 2]
    evs = await events_for(redis, jid)
    assert [(e.status, e.attempt) for e in evs] == [
        ("queued", 1),
        ("running", 1),
        ("queued", 2),
        ("running", 2),
        ("succeeded", 2),
    ]


async def test_deferred_job_waits_and_expires_later(infra: Infra, redis: Redis) -> None:
    calls.clear()
    now_ms = time.time() * 1000
    jid = await enqueue_now(
        redis, service=SERVICE, function="record", args=["later"], defer_by=60, expires=120
    )
    assert jid is not None
    score = await redis.zscore(queue_name(SERVICE), jid)
    assert score is not None and abs(score - (now_ms + 60_000)) < 5_000
    ttl_ms = await redis.pttl(f"arq:job:{jid}")
    assert 100_000 < ttl_ms <= 120_000
    assert [e.status for e in await events_for(redis, jid)] == ["queued"]


async def test_progress_goes_on_while_redis_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a job reporting progress during a Redis outage keeps working: no cancellation can have
    # been asked meanwhile (it is asked through Redis) and the progress event is only logged
    from libs.embedded import free_port

    down = Redis(port=free_port(), socket_connect_timeout=0.5)
    ctx = JobContext(
        job_id="j-outage", service=SERVICE, function="f", attempt=1, redis=down, state={}
    )
    try:
        with caplog.at_level(logging.WARNING, logger="aistack.queue"):
            await ctx.progress(50, "half way")
            await ctx.check_cancelled()
    finally:
        await down.aclose()
    assert ctx._last_progress == 50
    assert "cancellation not checked" in caplog.text


async def test_events_unsent_during_an_outage_go_with_the_next_one(redis: Redis) -> None:
    # a job that ended while Redis was unreachable must not stay "running" in the jobs service
    from libs import queue as q
    from libs.embedded import free_port

    q._unsent.clear()
    down = Redis(port=free_port(), socket_connect_timeout=0.5)
    ctx = JobContext(
        job_id="j-unsent", service=SERVICE, function="f", attempt=1, redis=down, state={}
    )
    try:
        await q.emit_event(down, ctx._event("running"))
        await q.emit_event(down, ctx._event("succeeded", progress=100))
    finally:
        await down.aclose()
    assert await events_for(redis, "j-unsent") == []
    other = JobContext(
        job_id="j-next", service=SERVICE, function="f", attempt=1, redis=redis, state={}
    )
    await q.emit_event(redis, other._event("running"))
    statuses = [e.status for e in await events_for(redis, "j-unsent")]
    assert statuses == ["running", "succeeded"]
    assert not q._unsent


async def _query_a_closed_port() -> None:
    """A real database outage: asyncpg connecting where nothing listens."""
    engine = create_async_engine(f"postgresql+asyncpg://x@127.0.0.1:{free_port()}/x")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


@job(max_tries=3, retry_outages=True)
async def db_down(ctx: JobContext, fail_with: str) -> None:
    calls.append(ctx.attempt)
    if fail_with == "outage":
        await _query_a_closed_port()
    raise ValueError("bad input")


@job(max_tries=3, name="db_down_plain")
async def db_down_plain(ctx: JobContext) -> None:
    calls.append(ctx.attempt)
    await _query_a_closed_port()


async def test_a_job_that_retries_outages_runs_again_until_its_last_try(
    infra: Infra, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("libs.queue.wrapper.outage_retry_delay_s", lambda attempt: 0.05 * attempt)
    calls.clear()
    outage = await enqueue_now(redis, service=SERVICE, function="db_down", args=["outage"])
    bug = await enqueue_now(redis, service=SERVICE, function="db_down", args=["bug"])
    plain = await enqueue_now(redis, service=SERVICE, function="db_down_plain")
    assert outage and bug and plain
    await run_burst(infra.redis_url, SERVICE, [db_down, db_down_plain])
    assert sorted(calls) == [1, 1, 1, 2, 3]  # only the outage ran again

    evs = await events_for(redis, outage)
    assert [(e.status, e.attempt) for e in evs] == [
        ("queued", 1),
        ("running", 1),
        ("queued", 2),
        ("running", 2),
        ("queued", 3),
        ("running", 3),
        ("failed", 3),  # the last try fails with the outage itself
    ]
    assert "ConnectionRefusedError" in (evs[-1].error or "")
    # not an outage, or a job that did not ask: failed at once
    for jid in (bug, plain):
        evs = await events_for(redis, jid)
        assert [(e.status, e.attempt) for e in evs][-1] == ("failed", 1)


async def test_outage_retry_delays_back_off_to_a_minute() -> None:
    assert [outage_retry_delay_s(a) for a in range(1, 8)] == [5, 10, 20, 40, 60, 60, 60]
