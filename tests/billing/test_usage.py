from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.queue import enqueue_now
from libs.testing import Infra, auth_headers, client_for, principal
from libs.usage import BILLING_SERVICE, RECORD_USAGE, UsageEvent, publish_usage
from services.billing import tasks as billing_tasks
from services.billing.app import build_app
from services.billing.models import UsageEventRecord
from services.billing.repository import UsageRepository
from tests.support.workers import run_burst


def _event(org: uuid.UUID, **kw: object) -> UsageEvent:
    base: dict[str, object] = {
        "request_id": uuid.uuid4().hex,
        "org_id": org,
        "model": "gpt-4o-mini",
        "provider": "openai",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": Decimal("0.00012345"),
        "latency_ms": 120,
    }
    base.update(kw)
    return UsageEvent.model_validate(base)


async def _count(factory: async_sessionmaker[AsyncSession], request_id: str) -> int:
    async with factory() as s:
        stmt = select(func.count()).where(UsageEventRecord.request_id == request_id)
        return int(await s.scalar(stmt) or 0)


async def test_duplicate_usage_event_counted_once(
    infra: Infra, redis: Redis, db: AsyncConnection
) -> None:
    factory = async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    org = uuid.uuid4()
    ev = _event(org, ttft_ms=40, cached=True)
    await publish_usage(ev, redis)
    await publish_usage(ev, redis)  # same job id: collapsed on the queue
    # a redelivery that got past the queue (other job id) is collapsed by the ledger
    await enqueue_now(
        redis, service=BILLING_SERVICE, function=RECORD_USAGE, args=[ev.payload()], job_id="redo"
    )
    # one job at a time: they share the test's connection
    worker = await run_burst(
        infra.redis_url,
        BILLING_SERVICE,
        billing_tasks.functions,
        ctx={"db": factory},
        max_jobs=1,
    )
    assert worker.jobs_complete == 2 and worker.jobs_failed == 0
    assert await _count(factory, ev.request_id) == 1
    async with factory() as s:
        row = (
            await s.scalars(
                select(UsageEventRecord).where(UsageEventRecord.request_id == ev.request_id)
            )
        ).one()
    assert row.cost_usd == Decimal("0.00012345") and row.ttft_ms == 40 and row.cached
    # the same request id of another kind is another event
    async with session_scope(factory) as s:
        assert await UsageRepository(s).record(ev.model_copy(update={"kind": "embedding"}))
        assert not await UsageRepository(s).record(ev)


async def test_usage_totals_by_model_and_day(db: AsyncConnection) -> None:
    alice, mallory = principal(), principal()
    assert alice.org_id and mallory.org_id
    factory = async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    d1 = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    d2 = datetime(2026, 3, 2, 0, 1, tzinfo=UTC)
    events = [
        _event(alice.org_id, created_at=d1, cost_usd=Decimal("0.1")),
        _event(alice.org_id, created_at=d1, cost_usd=Decimal("0.2"), status="error"),
        _event(
            alice.org_id, created_at=d2, model="claude", provider="anthropic", cost_usd=Decimal("1")
        ),
        _event(alice.org_id, created_at=datetime(2026, 4, 1, tzinfo=UTC)),  # outside the range
        _event(mallory.org_id, created_at=d1, cost_usd=Decimal("5")),
    ]
    async with session_scope(factory) as s:
        for e in events:
            await UsageRepository(s).record(e)

    async with client_for(build_app(), connection=db) as c:
        resp = await c.get(
            "/v1/billing/usage",
            params={"start": "2026-03-01", "end": "2026-03-31"},
            headers=auth_headers(alice),
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["totals"]["requests"] == 3
        assert body["totals"]["cost_usd"] == "1.30000000"  # fixed point, never "1.3E+0"
        assert body["totals"]["prompt_tokens"] == 30 and body["totals"]["total_tokens"] == 45
        assert body["totals"]["errors"] == 1
        rows = [(r["day"], r["model"], r["requests"], Decimal(r["cost_usd"])) for r in body["data"]]
        assert rows == [
            ("2026-03-01", "gpt-4o-mini", 2, Decimal("0.3")),
            ("2026-03-02", "claude", 1, Decimal("1")),
        ]
        assert [m["model"] for m in body["by_model"]] == ["claude", "gpt-4o-mini"]

        bad = await c.get(
            "/v1/billing/usage",
            params={"start": "2026-03-05", "end": "2026-03-01"},
            headers=auth_headers(alice),
        )
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_range"
        no_scope = principal(org_id=alice.org_id, scopes=["jobs:read"])
        assert (await c.get("/v1/billing/usage", headers=auth_headers(no_scope))).status_code == 403


class _FutureEvent(UsageEvent):
    """An event from a newer producer, with a field this billing does not store."""

    region: str = "eu-west"


async def test_fields_billing_does_not_store_yet_are_skipped(db: AsyncConnection) -> None:
    factory = async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    ev = _FutureEvent.model_validate(_event(uuid.uuid4()).model_dump())
    async with session_scope(factory) as s:
        assert await UsageRepository(s).record(ev)
        assert not await UsageRepository(s).record(ev)
    assert await _count(factory, ev.request_id) == 1


async def test_prompt_version_is_recorded_and_a_redelivery_still_counts_once(
    infra: Infra, redis: Redis, db: AsyncConnection
) -> None:
    factory = async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    version = str(uuid.uuid4())
    ev = _event(uuid.uuid4(), prompt_version_id=version)
    plain = _event(ev.org_id)
    assert ev.payload()["prompt_version_id"] == version
    await publish_usage(ev, redis)
    await publish_usage(plain, redis)
    # delivered again under another job id (a producer retry after a lost acknowledgement)
    await enqueue_now(
        redis, service=BILLING_SERVICE, function=RECORD_USAGE, args=[ev.payload()], job_id="again"
    )
    worker = await run_burst(
        infra.redis_url,
        BILLING_SERVICE,
        billing_tasks.functions,
        ctx={"db": factory},
        max_jobs=1,
    )
    assert worker.jobs_complete == 3 and worker.jobs_failed == 0
    assert await _count(factory, ev.request_id) == 1
    async with factory() as s:
        stored = dict(
            (
                await s.execute(
                    select(UsageEventRecord.request_id, UsageEventRecord.prompt_version_id).where(
                        UsageEventRecord.request_id.in_([ev.request_id, plain.request_id])
                    )
                )
            ).all()
        )
    assert stored == {ev.request_id: version, plain.request_id: None}
    # an event from before the field existed (no key at all) still validates and records
    old = plain.payload()
    del old["prompt_version_id"]
    assert UsageEvent.model_validate(old).prompt_version_id is None
