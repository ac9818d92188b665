"""libs/entitlements.py: what billing publishes, read by the hot path through a cache that
reads each organization once at a time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import Redis

from libs.entitlements import (
    DEFAULT_KEY,
    Entitlements,
    EntitlementsCache,
    Limits,
    entitlements_key,
    publish,
)


async def test_a_burst_of_one_organization_reads_redis_once(redis: Redis) -> None:
    org = uuid.uuid4()
    await publish(redis, org, Entitlements(plan="pro", limits=Limits(rpm=600)))
    cache = EntitlementsCache(redis, ttl_s=60)
    reads = 0
    mget = redis.mget

    async def counting(*args: Any, **kw: Any) -> Any:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)
        return await mget(*args, **kw)

    redis.mget = counting  # type: ignore[method-assign]
    got = await asyncio.gather(*(cache.get(org) for _ in range(100)))
    assert reads == 1
    assert all(e is not None and e.plan == "pro" and e.limits.rpm == 600 for e in got)
    await redis.delete(entitlements_key(org))


async def test_the_default_then_nothing(redis: Redis) -> None:
    cache = EntitlementsCache(redis, ttl_s=0)
    await redis.delete(DEFAULT_KEY)
    assert await cache.get(uuid.uuid4()) is None  # billing not deployed: the callers' settings
    await publish(redis, None, Entitlements(plan="free", limits=Limits(rpm=60)))
    ent = await cache.get(uuid.uuid4())
    assert ent is not None and ent.plan == "free"
    await redis.delete(DEFAULT_KEY)
