from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.testing import Infra, client_for
from services.auth.app import build_app
from tests.support.stacks.auth import auth_settings


@pytest.fixture
async def client(
    infra: Infra, db: AsyncConnection, redis: Redis
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(build_app(auth_settings()), connection=db) as c:
        yield c
