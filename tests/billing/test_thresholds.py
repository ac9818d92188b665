"""Soft budget thresholds: an organization crossing 50, 80 and 100 % of its monthly budget has
its admins told once per threshold and period, by the ledger's consumer."""

from __future__ import annotations

import uuid
from decimal import Decimal

from redis.asyncio import Redis

from libs.budget import Reservation, budget_key, reserve, settle
from libs.entitlements import Entitlements, Limits, publish
from libs.notify import event_id_for, job_id_for
from libs.usage import publish_usage
from services.billing.usage.consumer import UsageConsumer
from services.billing.usage.thresholds import tell_thresholds
from tests.billing.conftest import Factory, usage_event

PERIOD = "2026-12-01T00:00:00+00:00"


async def told(redis: Redis, org: uuid.UUID) -> list[int]:
    """The thresholds whose notification was queued for ``org`` this period."""
    out = []
    for percent in (50, 80, 100):
        job = job_id_for(event_id_for("billing.budget_threshold", f"{org}:{PERIOD}:{percent}"))
        if await redis.exists(f"arq:job:{job}"):
            out.append(percent)
    return out


async def spend(redis: Redis, org: uuid.UUID, usd: str) -> None:
    """What the llm does around a call: reserve, then settle the real cost."""
    r = await reserve(redis, [(budget_key(org, PERIOD), Decimal("1000"))], Decimal(usd))
    assert isinstance(r, Reservation)
    await settle(redis, r, Decimal(usd))


async def test_each_threshold_is_told_once_per_period(stream: Redis, factory: Factory) -> None:
    org = uuid.uuid4()
    await publish(
        stream,
        org,
        Entitlements(
            plan="pro", limits=Limits(monthly_spend_usd=Decimal("2.00")), period_start=PERIOD
        ),
    )
    consumer = UsageConsumer(stream, factory, consumer="t", thresholds=[50, 80, 100])

    await spend(stream, org, "0.90")  # 45 %: nothing yet
    await publish_usage(usage_event(org), stream)
    await consumer.run_once(block_ms=100)
    assert await told(stream, org) == []

    await spend(stream, org, "0.75")  # 82.5 %: 50 and 80 at once
    await publish_usage(usage_event(org), stream)
    await consumer.run_once(block_ms=100)
    assert await told(stream, org) == [50, 80]
    # checked again (the next batch, another consumer): nothing new
    assert await tell_thresholds(stream, [org], [50, 80, 100]) == []

    await spend(stream, org, "0.40")  # 102.5 %
    events = await tell_thresholds(stream, [org], [50, 80, 100])
    assert [(e.kind, e.data["threshold_percent"]) for e in events] == [
        ("billing.budget_threshold", 100)
    ]
    assert events[0].org_id == org and events[0].data["limit_usd"] == "2.00"
    assert events[0].data["spent_usd"] == "2.05"
    assert await told(stream, org) == [50, 80, 100]


async def test_no_budget_or_no_entitlements_tells_nobody(stream: Redis) -> None:
    unlimited, unknown = uuid.uuid4(), uuid.uuid4()
    await publish(stream, unlimited, Entitlements(plan="enterprise", period_start=PERIOD))
    await spend(stream, unlimited, "5")
    assert await tell_thresholds(stream, [unlimited, unknown], [50, 80, 100]) == []
