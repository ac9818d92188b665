"""Job types declared as a worker declares them, for the jobs service's tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.queue.names import TYPES_KEY, queue_name
from libs.worker.presence import declarations
from services.jobs.types.service import sync_job_types


async def publish_types(
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
    service: str,
    functions: Sequence[Any],
) -> None:
    """Declare ``functions``' job types as ``service``'s worker does, and let the jobs
    service read them (what its reconciler does every few seconds)."""
    mapping = declarations(service, queue_name(service), {f.name: f for f in functions})
    await redis.hset(TYPES_KEY, mapping=mapping)  # type: ignore[misc]
    async with session_scope(sessions) as session:
        await sync_job_types(redis, session)
