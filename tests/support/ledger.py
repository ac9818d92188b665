"""Record what waits on the usage stream into billing's ledger, as billing's worker does."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.prices import PriceCatalogue
from libs.usage import USAGE_STREAM
from services.billing.usage.consumer import UsageConsumer


async def drain_stream(
    redis: Redis,
    factory: async_sessionmaker[AsyncSession],
    prices: PriceCatalogue | None = None,
    *,
    consumer: str = "test",
) -> int:
    """Record every entry of the usage stream (claiming nothing); return how many were taken."""
    ledger = UsageConsumer(redis, factory, prices, consumer=consumer, claim_idle_ms=3_600_000)
    taken = 0
    while n := await ledger.run_once(None):
        taken += n
    return taken


async def stream_events(redis: Redis) -> list[dict[str, Any]]:
    """The usage events waiting on the usage stream, in order (JSON, as sent)."""
    return [orjson.loads(fields[b"e"]) for _, fields in await redis.xrange(USAGE_STREAM)]
