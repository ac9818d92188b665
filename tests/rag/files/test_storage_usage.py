"""rag's storage reaches billing: one sample per organization and day, counted once."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, async_sessionmaker

from libs.db import session_scope
from libs.usage import USAGE_STREAM
from services.billing.usage.repository import UsageRepository
from services.rag.files.storage_usage import sample_storage
from services.rag.models import File
from tests.support.ledger import drain_stream, stream_events


async def test_each_organizations_bytes_are_sampled_once_a_day(
    db: AsyncConnection, redis: Redis
) -> None:
    factory = async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    org = uuid.uuid4()
    async with session_scope(factory) as s:
        for n in (1000, 234):
            s.add(
                File(
                    org_id=org,
                    filename="a.txt",
                    purpose="assistants",
                    bytes=n,
                    sha256="0" * 64,
                    storage_key=f"k/{uuid.uuid4()}",
                )
            )
    await redis.delete(USAGE_STREAM)
    assert await sample_storage(factory, redis) >= 1
    await sample_storage(factory, redis)  # again the same day
    mine = [e for e in await stream_events(redis) if e["org_id"] == str(org)]
    assert len(mine) == 2 and mine[0]["kind"] == "storage" and mine[0]["storage_bytes"] == 1234
    await drain_stream(redis, factory)
    async with factory() as s:
        assert await UsageRepository(s).latest_storage(org) == 1234
