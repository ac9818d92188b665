"""Record what waits on the usage stream into billing's ledger, as billing's worker does."""

from __future__ import annotations

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.prices.catalogue import PriceCatalogue
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
