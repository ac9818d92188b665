"""The usage ledger: events on the stream recorded once each, whatever the redeliveries."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

from redis.asyncio import Redis
from sqlalchemy import select, text

from libs.db import session_scope
from libs.usage import (
    USAGE_STREAM,
    prepare_usage,
    publish_usage,
    publish_usage_batch,
    storage_sample,
)
from services.billing.models import UsageEventRecord, UsageRollup
from services.billing.usage.consumer import DEAD_STREAM, UsageConsumer
from services.billing.usage.partitions import Partitions, existing_months
from services.billing.usage.repository import UsageRepository
from tests.billing.conftest import Factory, ledger_count, rollup_requests, usage_event
from tests.support.ledger import drain_stream


async def test_duplicates_and_replays_count_once(stream: Redis, factory: Factory) -> None:
    org = uuid.uuid4()
    ev = usage_event(org, ttft_ms=40, cached=True)
    other = usage_event(org)
    await publish_usage(ev, stream)
    await publish_usage(ev, stream)  # a producer retry: the same event twice on the stream
    await publish_usage_batch([prepare_usage(other), prepare_usage(ev)], stream)
    assert await drain_stream(stream, factory) == 4
    assert await ledger_count(factory, org) == 2
    assert await rollup_requests(factory, org) == 2
    assert await stream.xlen(USAGE_STREAM) == 0  # recorded entries leave the stream

    # replayed long after (an outbox replayed twice): still once, rollups unchanged
    await publish_usage(ev, stream)
    assert await drain_stream(stream, factory) == 1
    assert await ledger_count(factory, org) == 2
    assert await rollup_requests(factory, org) == 2
    async with factory() as s:
        row = (
            await s.scalars(
                select(UsageEventRecord).where(UsageEventRecord.request_id == ev.request_id)
            )
        ).one()
    # a model the catalogue lacks keeps the producer's figure
    assert row.cost_usd == Decimal("0.00012345") and row.price_ref == "producer"
    assert row.ttft_ms == 40 and row.cached

    # the same request id of another kind is another event
    async with session_scope(factory) as s:
        assert await UsageRepository(s).record(ev.model_copy(update={"kind": "embedding"}))
        assert not await UsageRepository(s).record(ev)


async def test_a_dead_consumers_batch_is_claimed_and_recorded_once(
    stream: Redis, factory: Factory
) -> None:
    org = uuid.uuid4()
    evs = [usage_event(org) for _ in range(5)]
    await publish_usage_batch([prepare_usage(e) for e in evs], stream)
    dead = UsageConsumer(stream, factory, consumer="dead", batch=3)
    taken = await dead.next_batch(None)  # read, then the process dies before recording
    assert len(taken) == 3
    # a live consumer records what is new at once; the dead one's entries once they idled
    live = UsageConsumer(stream, factory, consumer="live", claim_idle_ms=3_600_000)
    assert await live.run_once(None) == 2
    assert await ledger_count(factory, org) == 2
    live.claim_idle_ms = 0
    assert await live.run_once(None) == 3
    assert await ledger_count(factory, org) == 5
    pending = await stream.xpending(USAGE_STREAM, "billing-ledger")
    assert pending["pending"] == 0
    # the dead consumer comes back under its name: its pending list is empty, nothing twice
    assert await dead.run_once(None) == 0
    assert await rollup_requests(factory, org) == 5


async def test_an_entry_that_is_no_usage_event_goes_to_the_dead_letter_stream(
    stream: Redis, factory: Factory
) -> None:
    org = uuid.uuid4()
    good = usage_event(org)
    await stream.xadd(USAGE_STREAM, {"e": b'{"request_id": "x"}'})
    await publish_usage(good, stream)
    assert await drain_stream(stream, factory) == 2
    assert await ledger_count(factory, org) == 1
    ((_, fields),) = await stream.xrange(DEAD_STREAM)
    assert fields[b"e"] == b'{"request_id": "x"}' and b"not a usage event" in fields[b"reason"]


async def test_rollups_per_day_key_and_user_and_storage_samples(
    stream: Redis, factory: Factory
) -> None:
    org, key, user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    day = datetime(2026, 5, 3, 12, tzinfo=UTC)
    evs = [
        usage_event(org, key_id=key, user_id=user, created_at=day, cached_tokens=4),
        usage_event(org, key_id=key, user_id=user, created_at=day, status="error"),
        usage_event(org, user_id=user, created_at=day, batch=True),
        storage_sample(org, 1000, date(2026, 5, 3), "rag"),
        storage_sample(org, 1000, date(2026, 5, 3), "rag"),  # sampled twice the same day
    ]
    await publish_usage_batch([prepare_usage(e) for e in evs], stream)
    await drain_stream(stream, factory)
    async with factory() as s:
        rows = (
            await s.execute(
                select(
                    UsageRollup.kind,
                    UsageRollup.key_id,
                    UsageRollup.requests,
                    UsageRollup.errors,
                    UsageRollup.batch,
                    UsageRollup.cached_tokens,
                    UsageRollup.storage_bytes,
                )
                .where(UsageRollup.org_id == org)
                .order_by(UsageRollup.kind, UsageRollup.requests)
            )
        ).all()
    no_id = uuid.UUID(int=0)
    assert [tuple(r) for r in rows] == [
        ("chat", no_id, 1, 0, 1, 0, 0),
        ("chat", key, 2, 1, 0, 4, 0),
        ("storage", no_id, 1, 0, 0, 0, 1000),
    ]


async def test_partitions_are_made_on_demand_ahead_and_dropped_past_retention(
    factory: Factory,
) -> None:
    org = uuid.uuid4()
    old = usage_event(org, created_at=datetime(2019, 1, 15, tzinfo=UTC))
    async with session_scope(factory) as s:
        assert await UsageRepository(s).record(old)  # no partition for 2019-01: made first
        months = await existing_months(s)
        assert date(2019, 1, 1) in months
        dropped = await Partitions().maintain(
            s, ahead=3, retention_months=24, now=datetime(2026, 12, 7, tzinfo=UTC)
        )
        assert "usage_events_2019_01" in dropped
        months = await existing_months(s)
        assert {date(2027, 1, 1), date(2027, 2, 1), date(2027, 3, 1)} <= months
        assert date(2019, 1, 1) not in months
        gone = await s.scalar(
            text("SELECT count(*) FROM billing.usage_events WHERE org_id = :o"), {"o": org}
        )
        assert gone == 0


async def test_the_workers_loop_records_batches_while_it_reads_the_next(
    stream: Redis, factory: Factory
) -> None:
    org = uuid.uuid4()
    evs = [usage_event(org) for _ in range(250)]
    await publish_usage_batch([prepare_usage(e) for e in evs], stream)
    consumer = UsageConsumer(stream, factory, batch=40, block_ms=50)
    loop = asyncio.create_task(consumer.run_forever())
    try:
        await publish_usage_batch([prepare_usage(e) for e in evs[:30]], stream)  # duplicates
        for _ in range(200):
            if await stream.xlen(USAGE_STREAM) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert await stream.xlen(USAGE_STREAM) == 0
    assert await ledger_count(factory, org) == 250
    assert await rollup_requests(factory, org) == 250
