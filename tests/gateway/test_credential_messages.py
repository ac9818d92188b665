"""A refused credential is named for what the caller sent: an API key, or an access token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from libs.testing import Infra
from tests.support.stacks.echo import Upstream, gateway_client, gateway_settings


@pytest.fixture
async def gw(upstream: Upstream, infra: Infra, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(gateway_settings(upstream.url, infra.redis_url)) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer ask_..."},  # the README's placeholder, pasted as is
        {"authorization": "Bearer ask_short"},
        {"authorization": "Bearer sk-proj-" + "x" * 40},  # another vendor's key
        {"authorization": "Bearer not-a-token"},
        {"x-api-key": "garbage"},
    ],
)
async def test_a_malformed_api_key_is_called_an_invalid_api_key(
    gw: httpx.AsyncClient, upstream: Upstream, headers: dict[str, str]
) -> None:
    before = upstream.auth.introspections
    for path in ("/v1/jobs", "/v1/models"):  # the platform's error shape, and OpenAI's
        resp = await gw.get(path, headers=headers)
        assert resp.status_code == 401
        err = resp.json()["error"]
        assert err["code"] == "invalid_api_key", err
        assert err["message"].startswith("Invalid API key"), err
        assert "access token" not in err["message"]
    # nothing that cannot be a key is sent to the auth service to be looked up
    assert upstream.auth.introspections == before


async def test_an_unknown_api_key_and_a_bad_access_token_keep_their_messages(
    gw: httpx.AsyncClient, upstream: Upstream
) -> None:
    resp = await gw.get("/v1/jobs", headers={"authorization": "Bearer ask_" + "Z" * 40})
    assert resp.json()["error"] == {
        **resp.json()["error"],
        "code": "invalid_api_key",
        "message": "Invalid or revoked API key",
    }
    token = upstream.auth.token()
    head, body, _ = token.split(".")
    resp = await gw.get("/v1/jobs", headers={"authorization": f"Bearer {head}.{body}.AAAA"})
    err = resp.json()["error"]
    assert (err["code"], err["message"]) == ("invalid_token", "Invalid access token")
