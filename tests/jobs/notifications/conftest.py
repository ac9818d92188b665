"""auth and jobs in-process, the fan-out asking auth over HTTP (as the worker does)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.settings import DEV_INTERNAL_SECRET
from libs.testing import client_for
from services.auth.app import build_app as build_auth
from services.jobs.app import build_app
from services.jobs.notifications.fanout import Fanout, Recipients
from tests.support.stacks.auth import auth_settings


@dataclass
class Stack:
    auth: httpx.AsyncClient
    jobs: httpx.AsyncClient
    fanout: Fanout


@pytest.fixture
async def stack(
    db: AsyncConnection, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Stack]:
    async with (
        client_for(build_auth(auth_settings()), connection=db) as auth,
        client_for(build_app(), connection=db) as jobs,
    ):
        recipients = Recipients(auth, str(auth.base_url), DEV_INTERNAL_SECRET)
        yield Stack(auth, jobs, Fanout(sessions, redis, recipients))
