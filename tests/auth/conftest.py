from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.testing import Infra, client_for
from services.auth.app import build_app
from services.auth.settings import AuthSettings


def auth_settings(**overrides: object) -> AuthSettings:
    base: dict[str, object] = {"login_failures_per_ip": 1000, "log_json": False}
    base.update(overrides)
    return AuthSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def client(
    infra: Infra, db: AsyncConnection, redis: Redis
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(build_app(auth_settings()), connection=db) as c:
        yield c
