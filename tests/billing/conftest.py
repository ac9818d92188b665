from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.entitlements import DEFAULT_KEY
from libs.testing import Infra
from libs.usage import USAGE_STREAM, UsageEvent
from services.billing.models import UsageEventRecord, UsageRollup
from services.billing.usage.consumer import DEAD_STREAM

Factory = async_sessionmaker[AsyncSession]


def usage_event(org: uuid.UUID, **kw: object) -> UsageEvent:
    base: dict[str, object] = {
        "request_id": uuid.uuid4().hex,
        "org_id": org,
        "model": "unpriced-model",
        "provider": "openai",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": Decimal("0.00012345"),
        "latency_ms": 120,
    }
    base.update(kw)
    return UsageEvent.model_validate(base)


@pytest.fixture(autouse=True)
async def _no_default_entitlements_left(infra: Infra) -> AsyncIterator[None]:
    """billing's app publishes its default plan's entitlements at start: left in Redis, they
    would be the limits of every organization unknown to later tests that keep Redis as is."""
    yield
    client = Redis.from_url(infra.redis_url)
    try:
        await client.delete(DEFAULT_KEY)
    finally:
        await client.aclose()


@pytest.fixture
def factory(db: AsyncConnection) -> Factory:
    return async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )


@pytest.fixture
async def stream(redis: Redis) -> AsyncIterator[Redis]:
    """Redis with an empty usage stream (and no consumer group) before and after."""
    await redis.delete(USAGE_STREAM, DEAD_STREAM)
    yield redis
    await redis.delete(USAGE_STREAM, DEAD_STREAM)


async def ledger_count(factory: Factory, org: uuid.UUID) -> int:
    async with factory() as s:
        stmt = select(func.count()).where(UsageEventRecord.org_id == org)
        return int(await s.scalar(stmt) or 0)


async def rollup_requests(factory: Factory, org: uuid.UUID) -> int:
    async with factory() as s:
        stmt = select(func.coalesce(func.sum(UsageRollup.requests), 0)).where(
            UsageRollup.org_id == org
        )
        return int(await s.scalar(stmt) or 0)
