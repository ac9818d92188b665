from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.testing import client_for
from services.auth.app import build_app
from tests.support.stacks.auth import PASSWORD, auth_settings, new_email, signup


@pytest.fixture
async def strict(db: AsyncConnection, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    settings = auth_settings(login_failures_per_account=3, login_failures_per_ip=5)
    async with client_for(build_app(settings), connection=db) as c:
        yield c


async def _fail(c: httpx.AsyncClient, email: str, ip: str = "203.0.113.7") -> httpx.Response:
    return await c.post(
        "/v1/auth/login",
        json={"email": email, "password": "Wrong-guess-00"},
        headers={"x-forwarded-for": f"10.0.0.1, {ip}"},
    )


async def test_failed_logins_per_account_answer_429(strict: httpx.AsyncClient) -> None:
    acct = await signup(strict)
    for _ in range(3):
        assert (await _fail(strict, acct.email)).status_code == 401
    blocked = await _fail(strict, acct.email)
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "too_many_attempts"
    assert 1 <= int(blocked.headers["retry-after"]) <= 900
    # even the right password waits now
    right = await strict.post("/v1/auth/login", json={"email": acct.email, "password": PASSWORD})
    assert right.status_code == 429
    # unknown accounts are limited the same way (nothing reveals which emails exist)
    ghost = new_email()
    codes = [(await _fail(strict, ghost, "198.51.100.9")).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]


async def test_failed_logins_per_ip(strict: httpx.AsyncClient) -> None:
    codes = [(await _fail(strict, new_email())).status_code for _ in range(6)]
    assert codes == [401] * 5 + [429]
    # another address is not affected
    assert (await _fail(strict, new_email(), ip="192.0.2.55")).status_code == 401


async def test_success_clears_account_failures(strict: httpx.AsyncClient) -> None:
    acct = await signup(strict)
    for _ in range(2):
        await _fail(strict, acct.email, ip="192.0.2.1")
    ok = await strict.post("/v1/auth/login", json={"email": acct.email, "password": PASSWORD})
    assert ok.status_code == 200
    codes = [(await _fail(strict, acct.email, ip="192.0.2.2")).status_code for _ in range(3)]
    assert codes == [401, 401, 401]


async def test_refreshes_are_limited_per_address(db: AsyncConnection, redis: Redis) -> None:
    settings = auth_settings(refreshes_per_ip_per_minute=3)
    async with client_for(build_app(settings), connection=db) as c:
        acct = await signup(c)
        ip = {"x-forwarded-for": "203.0.113.50"}
        token = acct.tokens["refresh_token"]
        # good and bad tokens count alike: guessing costs the same as refreshing
        bad = await c.post("/v1/auth/refresh", json={"refresh_token": "rt_nope"}, headers=ip)
        assert bad.status_code == 401
        for _ in range(2):
            ok = await c.post("/v1/auth/refresh", json={"refresh_token": token}, headers=ip)
            assert ok.status_code == 200, ok.text
            token = ok.json()["refresh_token"]
        capped = await c.post("/v1/auth/refresh", json={"refresh_token": token}, headers=ip)
        assert capped.status_code == 429
        assert capped.json()["error"]["code"] == "rate_limited"
        assert set(capped.json()["error"]) >= {"code", "message", "request_id"}
        assert 1 <= int(capped.headers["retry-after"]) <= 60
        assert capped.headers["ratelimit-limit"] == "3"
        # refused before the token was looked at: it is still the current one
        elsewhere = {"x-forwarded-for": "203.0.113.51"}
        again = await c.post("/v1/auth/refresh", json={"refresh_token": token}, headers=elsewhere)
        assert again.status_code == 200, again.text
