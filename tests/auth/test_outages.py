"""The auth service while Redis or PostgreSQL is down.

API-key introspection is what the gateway falls back on when its own Redis cache is gone,
so it must keep answering without Redis; routes that cannot work without a dependency
answer 503 service_unavailable (they were 500 tracebacks).
"""

from __future__ import annotations

import time

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.redis import guard_for
from libs.testing import Infra, client_for
from services.auth.app import build_app
from services.auth.models import ApiKey
from tests.support.faults.outages import assert_unavailable, database_down, redis_down, redis_hung
from tests.support.stacks.auth import PASSWORD, SERVICE, auth_settings, signup


async def test_api_keys_still_introspect_without_redis(
    infra: Infra, db: AsyncConnection, redis: Redis
) -> None:
    app = build_app(auth_settings())
    async with client_for(app, connection=db) as c:
        acct = await signup(c)
        resp = await c.post(
            "/v1/api-keys", json={"name": "ci", "scopes": ["llm:use"]}, headers=acct.headers
        )
        assert resp.status_code == 201, resp.text
        key, key_id = resp.json()["key"], resp.json()["id"]

        async with redis_down(app):
            resp = await c.post("/internal/api-keys/introspect", json={"key": key}, headers=SERVICE)
            assert resp.status_code == 200, resp.text
            assert resp.json()["active"] is True and resp.json()["key_id"] == key_id
            # last-used is skipped, not guessed, while its once-a-minute marker is unreachable
            used = await db.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
            assert used is None

            # the sign-in limits live in Redis: refuse clearly rather than unchecked
            resp = await c.post("/v1/auth/login", json={"email": acct.email, "password": PASSWORD})
            assert_unavailable(resp, "redis")

        # a Redis that accepts connections and never answers: still an answer, and quickly
        # (the gateway gives up on auth after 2 s; the client's own timeout is 5 s)
        async with redis_hung(app) as hung:
            started = time.monotonic()
            resp = await c.post("/internal/api-keys/introspect", json={"key": key}, headers=SERVICE)
            assert resp.status_code == 200 and resp.json()["active"] is True, resp.text
            assert time.monotonic() - started < 1.5
            # the first wait marked Redis down: the next introspection does not wait again
            guard = guard_for(hung)
            assert not guard.up
            skipped = guard.skipped
            resp = await c.post("/internal/api-keys/introspect", json={"key": key}, headers=SERVICE)
            assert resp.status_code == 200 and resp.json()["active"] is True, resp.text
            assert guard.skipped == skipped + 1

        # back: last-used is recorded again
        resp = await c.post("/internal/api-keys/introspect", json={"key": key}, headers=SERVICE)
        assert resp.json()["active"] is True
        used = await db.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
        assert used is not None


async def test_database_down_is_503_for_sign_in_and_profile(
    infra: Infra, db: AsyncConnection, redis: Redis
) -> None:
    app = build_app(auth_settings())
    async with client_for(app, connection=db) as c:
        acct = await signup(c)
        async with database_down(app):
            resp = await c.post("/v1/auth/login", json={"email": acct.email, "password": PASSWORD})
            assert_unavailable(resp, "database")
            assert_unavailable(await c.get("/v1/auth/me", headers=acct.headers), "database")
            resp = await c.post(
                "/internal/api-keys/introspect", json={"key": "ask_" + "a" * 40}, headers=SERVICE
            )
            assert_unavailable(resp, "database")
        resp = await c.get("/v1/auth/me", headers=acct.headers)
        assert resp.status_code == 200, resp.text
