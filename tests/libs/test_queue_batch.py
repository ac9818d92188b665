"""Batched enqueue (the llm's usage events): the same jobs and events as enqueue_now, once each."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from arq.jobs import Job
from opentelemetry import trace
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, async_sessionmaker

from libs.context import request_id_var
from libs.queue import (
    _trace_id_from_carrier,
    as_arq,
    enqueue_now,
    enqueue_prepared,
    prepare_job,
    queue_name,
)
from libs.telemetry import extract_trace_context
from libs.testing import Infra
from libs.usage import BILLING_SERVICE, RECORD_USAGE, UsageEvent
from services.billing import tasks as billing_tasks
from services.billing.models import UsageEventRecord
from tests.support.workers import events_for, run_burst


def _event(org: uuid.UUID) -> UsageEvent:
    return UsageEvent(
        request_id=uuid.uuid4().hex,
        org_id=org,
        model="gpt-4o-mini",
        provider="openai",
        prompt_tokens=12,
        completion_tokens=9,
        cost_usd=Decimal("0.0000072"),
        latency_ms=3,
    )


async def test_prepared_jobs_look_like_enqueue_now(redis: Redis) -> None:
    args = [{"n": 1, "when": "x"}]
    token = request_id_var.set("req-one")
    try:
        job = prepare_job(service="billing", function="f", args=args, job_id="batch-1")
    finally:
        request_id_var.reset(token)
    await enqueue_now(redis, service="billing", function="f", args=args, job_id="single-1")

    assert await enqueue_prepared(redis, [job]) == ["batch-1"]
    arq = as_arq(redis)
    queued = {m.decode() for m in await redis.zrange(queue_name("billing"), 0, -1)}
    assert {"batch-1", "single-1"} <= queued
    batch = await Job("batch-1", arq, _queue_name=queue_name("billing")).info()
    single = await Job("single-1", arq, _queue_name=queue_name("billing")).info()
    assert batch is not None and single is not None
    assert (batch.function, batch.args) == (single.function, single.args) == ("f", tuple(args))
    assert batch.kwargs["_meta"].keys() == single.kwargs["_meta"].keys()
    # the request id of the moment the job was prepared, not of the moment it was sent
    assert batch.kwargs["_meta"]["request_id"] == "req-one"
    [queued_event] = await events_for(redis, "batch-1")
    assert (queued_event.status, queued_event.request_id) == ("queued", "req-one")
    assert queued_event.args == args


async def test_duplicates_are_skipped_within_and_across_batches(redis: Redis) -> None:
    a = prepare_job(service="billing", function="f", job_id="dup-a")
    b = prepare_job(service="billing", function="f", job_id="dup-b")
    assert await enqueue_prepared(redis, [a, b, a]) == ["dup-a", "dup-b", None]
    assert await enqueue_prepared(redis, [b]) == [None]
    assert await enqueue_now(redis, service="billing", function="f", job_id="dup-a") is None
    assert len(await events_for(redis, "dup-a")) == 1
    assert await enqueue_prepared(redis, []) == []


async def test_usage_jobs_an_older_producer_queued_are_recorded_once(
    infra: Infra, redis: Redis, db: AsyncConnection
) -> None:
    """Usage travels on its stream now; billing still records the jobs queued before."""
    org = uuid.uuid4()
    events = [_event(org) for _ in range(5)]
    jobs = [
        prepare_job(
            service=BILLING_SERVICE,
            function=RECORD_USAGE,
            args=[e.payload()],
            job_id=e.key,
            org_id=org,
            internal=True,
        )
        for e in events
    ]
    await enqueue_prepared(redis, jobs)
    await enqueue_prepared(redis, jobs[:2])  # a retried batch changes nothing
    factory = async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    worker = await run_burst(
        infra.redis_url,
        BILLING_SERVICE,
        billing_tasks.functions,
        ctx={"db": factory},
        max_jobs=1,
    )
    assert worker.jobs_complete == 5 and worker.jobs_failed == 0
    async with factory() as s:
        count = await s.scalar(select(func.count()).where(UsageEventRecord.org_id == org))
    assert count == 5


@pytest.mark.parametrize(
    "carrier",
    [
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"},
        {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"},
        {"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"},
        {"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x"},
        {"traceparent": "garbage"},
        {},
    ],
)
def test_queued_events_read_the_trace_id_as_the_propagator_does(carrier: dict[str, str]) -> None:
    # the queued event's trace id is read from the job's carrier without extracting a context
    span_ctx = trace.get_current_span(extract_trace_context(carrier)).get_span_context()
    expected = format(span_ctx.trace_id, "032x") if span_ctx.is_valid else None
    assert _trace_id_from_carrier(carrier) == expected
