"""What the jobs service's tests share: a session factory inside the test's transaction, the
events recorder on it, the app on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.testing import client_for
from services.jobs.app import build_app
from services.jobs.jobs.recorder import EventConsumer


@pytest.fixture
def sessions(db: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )


@pytest.fixture
def recorder(redis: Redis, sessions: async_sessionmaker[AsyncSession]) -> EventConsumer:
    return EventConsumer(redis, sessions, consumer="test")


@pytest.fixture
async def api(db: AsyncConnection, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(build_app(), connection=db) as c:
        yield c
