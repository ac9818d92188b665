"""The auth service (or its JWKS) being down is an outage, not a credential failure: 503 with
Retry-After everywhere, public routes included, so clients keep their tokens and retry."""

from __future__ import annotations

import asyncio

import httpx
import httpx2
import openai
import pytest
from redis.asyncio import Redis

from gateway.apikeys import STALE_SERVED
from gateway.app import build_app
from libs.testing import Infra, running
from tests.support.servers import dead_url
from tests.support.stacks.echo import (
    Upstream,
    forwarded_principal,
    gateway_client,
    gateway_settings,
)


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


async def test_a_key_auth_confirmed_keeps_working_while_auth_is_down(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    """Within GATEWAY_API_KEY_STALE_SECONDS of auth's last yes, a key keeps working while auth
    cannot answer (from Redis, past the entry's freshness); a key auth never confirmed, or one
    revoked since, does not."""
    settings = gateway_settings(
        upstream.url, infra.redis_url, api_key_cache_ttl=1, api_key_stale_seconds=60
    )
    key, info = upstream.auth.add_api_key()
    revoked, _ = upstream.auth.add_api_key()
    never_seen, _ = upstream.auth.add_api_key()
    async with gateway_client(settings) as gw:
        for k in (key, revoked):
            assert (await gw.get("/v1/models", headers={"x-api-key": k})).status_code == 200
        await upstream.auth.revoke(revoked, redis)
        await asyncio.sleep(1.2)  # past the Redis entry's freshness and the in-process one
        before = STALE_SERVED._value.get()
        upstream.auth.up = False
        try:
            p = forwarded_principal(await gw.get("/v1/models", headers={"x-api-key": key}))
            assert p is not None and str(p.key_id) == info["key_id"]
            assert STALE_SERVED._value.get() > before
            _assert_outage(await gw.get("/v1/models", headers={"x-api-key": never_seen}))
            _assert_outage(await gw.get("/v1/models", headers={"x-api-key": revoked}))
        finally:
            upstream.auth.up = True
        # auth back: a key revoked now is refused at once (the stale copy is dropped too)
        await upstream.auth.revoke(key, redis)
        for _ in range(100):
            if (await gw.get("/v1/models", headers={"x-api-key": key})).status_code == 401:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the revoked key still works")


async def test_without_redis_the_process_remembers_the_last_yes(
    upstream: Upstream, infra: Infra
) -> None:
    settings = gateway_settings(
        upstream.url, infra.redis_url, use_redis=False, api_key_stale_seconds=60
    )
    key, _ = upstream.auth.add_api_key()
    async with gateway_client(settings) as gw:
        assert (await gw.get("/v1/models", headers={"x-api-key": key})).status_code == 200
        await asyncio.sleep(0.6)  # past the in-process entry (0.5 s)
        upstream.auth.up = False
        try:
            assert (await gw.get("/v1/models", headers={"x-api-key": key})).status_code == 200
        finally:
            upstream.auth.up = True


async def test_stale_answers_can_be_turned_off(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    settings = gateway_settings(
        upstream.url, infra.redis_url, api_key_cache_ttl=1, api_key_stale_seconds=0
    )
    key, _ = upstream.auth.add_api_key()
    async with gateway_client(settings) as gw:
        assert (await gw.get("/v1/models", headers={"x-api-key": key})).status_code == 200
        await asyncio.sleep(1.2)
        upstream.auth.up = False
        try:
            _assert_outage(await gw.get("/v1/models", headers={"x-api-key": key}))
        finally:
            upstream.auth.up = True
