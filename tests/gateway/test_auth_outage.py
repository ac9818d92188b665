"""The auth service (or its JWKS) being down is an outage, not a credential failure: 503 with
Retry-After everywhere, public routes included, so clients keep their tokens and retry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import httpx2
import openai
import pytest
from redis.asyncio import Redis

from gateway.app import build_app
from libs.testing import Infra, running
from tests.gateway.authfake import FakeAuth
from tests.gateway.authstack import (
    Upstream,
    echo_app,
    forwarded_principal,
    gateway_client,
    gateway_settings,
)
from tests.gateway.conftest import dead_url, serve


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    auth = FakeAuth()
    running = await serve(echo_app(auth))
    yield Upstream(auth, running.url)
    await running.stop()


def _assert_outage(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    err = resp.json()["error"]
    assert err["code"] == "auth_unavailable"
    assert err["request_id"] == resp.headers["x-request-id"]
    assert "www-authenticate" not in resp.headers


async def test_jwks_unreachable_is_503_on_public_and_private_routes(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    # the auth service answers, its JWKS does not (never loaded: nothing to verify with)
    settings = gateway_settings(upstream.url, infra.redis_url, jwks_url=dead_url())
    bearer = {"authorization": f"Bearer {upstream.auth.token()}"}
    async with gateway_client(settings) as gw:
        # a public route: the caller is not passed on anonymous (the service would 401 them)
        for method, path in (("GET", "/v1/auth/me"), ("POST", "/v1/auth/logout")):
            resp = await gw.request(method, path, headers=bearer)
            _assert_outage(resp)
            assert set(resp.json()["error"]) >= {"code", "message", "request_id"}
        _assert_outage(await gw.get("/v1/jobs", headers=bearer))
        # OpenAI's shape on its routes, and its SDK sees a server error, not a bad key
        resp = await gw.get("/v1/models", headers=bearer)
        _assert_outage(resp)
        assert resp.json()["error"]["type"] == "api_error"
        # credentials that are bad in themselves still fall through as anonymous
        resp = await gw.get("/v1/auth/me", headers={"authorization": "Bearer nonsense"})
        assert forwarded_principal(resp) is None
        resp = await gw.get("/v1/auth/me")
        assert forwarded_principal(resp) is None


async def test_jwks_unreachable_through_the_openai_sdk(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    settings = gateway_settings(upstream.url, infra.redis_url, jwks_url=dead_url())
    app = build_app(settings)
    async with (
        running(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        client = openai.AsyncOpenAI(
            base_url="http://gw/v1", api_key=upstream.auth.token(), http_client=http, max_retries=0
        )
        with pytest.raises(openai.InternalServerError) as info:
            await client.models.list()
    assert info.value.status_code == 503
    assert info.value.response.json()["error"]["code"] == "auth_unavailable"
    assert int(info.value.response.headers["retry-after"]) >= 1


async def test_introspection_down_is_503_on_a_public_route(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    key, _ = upstream.auth.add_api_key()
    async with gateway_client(gateway_settings(upstream.url, infra.redis_url)) as gw:
        upstream.auth.up = False
        try:
            public = await gw.get("/v1/auth/me", headers={"x-api-key": key})
            private = await gw.get("/v1/jobs", headers={"x-api-key": key})
        finally:
            upstream.auth.up = True
        _assert_outage(public)
        _assert_outage(private)
        # back up: the same key is forwarded as itself
        p = forwarded_principal(await gw.get("/v1/auth/me", headers={"x-api-key": key}))
        assert p is not None and p.key_id is not None
