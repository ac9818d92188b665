"""Storage metered to billing: once a day, each organization's bytes kept (its files, and
its vector stores' indexed chunks) as one ``storage`` usage event (libs/usage.py
``storage_sample``: one per organization and UTC day, so sampling again that day is a
duplicate billing ignores)."""

from __future__ import annotations

from datetime import UTC, datetime

from redis.asyncio import Redis
from sqlalchemy import func, select, union_all

from libs.db import SessionFactory
from libs.usage import prepare_usage, publish_usage_batch, storage_sample
from services.rag.models import File, VectorStoreFile

BATCH = 500


async def sample_storage(sessions: SessionFactory, redis: Redis) -> int:
    """Send today's storage sample of every organization keeping something; return how many."""
    kept = union_all(
        select(File.org_id.label("org_id"), File.bytes.label("n")),
        select(VectorStoreFile.org_id.label("org_id"), VectorStoreFile.usage_bytes.label("n")),
    ).subquery()
    stmt = select(kept.c.org_id, func.sum(kept.c.n)).group_by(kept.c.org_id)
    async with sessions() as session:
        rows = (await session.execute(stmt)).all()
    today = datetime.now(UTC).date()
    messages = [prepare_usage(storage_sample(org, int(n or 0), today, "rag")) for org, n in rows]
    for i in range(0, len(messages), BATCH):
        await publish_usage_batch(messages[i : i + BATCH], redis)
    return len(messages)
