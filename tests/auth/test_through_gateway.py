"""The real auth service behind the real gateway: the token and introspection contracts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import JSONResponse

from gateway.app import build_app as build_gateway
from gateway.settings import GatewaySettings
from libs.db import Database
from libs.identity import INTERNAL_HEADER, verify_internal_token
from libs.registry import NAMES
from libs.settings import DEV_INTERNAL_SECRET
from libs.testing import Infra, client_for
from services.auth.app import build_app
from tests.support.servers import Running, serve
from tests.support.stacks.auth import PASSWORD, SERVICE, auth_settings, new_email

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _echo() -> FastAPI:
    app = FastAPI()

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"principal_header": request.headers.get(INTERNAL_HEADER)})

    app.add_api_route("/{path:path}", echo, methods=["GET", "POST"])
    return app


@dataclass
class Stack:
    gw: httpx.AsyncClient
    auth: httpx.AsyncClient


@pytest.fixture
async def stack(infra: Infra, db: AsyncConnection, redis: Redis) -> AsyncIterator[Stack]:
    auth_app = build_app(auth_settings())
    auth: Running = await serve(auth_app)
    # every request of the served app joins the test's transaction
    auth_app.state.db = Database.joined(db)
    echo = await serve(_echo())
    urls = {f"{name}_url": echo.url for name in NAMES}
    urls["auth_url"] = auth.url
    settings = GatewaySettings.model_validate(
        {"use_redis": True, "redis_url": infra.redis_url, "jwks_min_refetch_interval": 0.1, **urls}
    )
    try:
        async with (
            client_for(build_gateway(settings)) as gw,
            httpx.AsyncClient(base_url=auth.url) as direct,
        ):
            yield Stack(gw, direct)
    finally:
        await echo.stop()
        await auth.stop()


async def test_sign_in_use_tokens_and_api_keys_through_the_gateway(stack: Stack) -> None:
    gw = stack.gw
    email = new_email()
    reg = await gw.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert reg.status_code == 202, reg.text
    tokens = (await gw.post("/v1/auth/login", json={"email": email, "password": PASSWORD})).json()
    bearer = {"authorization": f"Bearer {tokens['access_token']}"}

    me = await gw.get("/v1/auth/me", headers=bearer)
    assert me.status_code == 200, me.text
    assert me.json()["user"]["email"] == email
    assert me.json()["session_id"] == tokens["session_id"]

    # the gateway turns the JWT into a principal for other services
    echoed = await gw.get("/v1/vector_stores", headers=bearer)
    assert echoed.status_code == 200, echoed.text
    p = verify_internal_token(echoed.json()["principal_header"], DEV_INTERNAL_SECRET)
    assert str(p.org_id) == tokens["org_id"] and p.roles == ["owner"]
    assert str(p.session_id) == tokens["session_id"]

    # an API key made through the gateway is resolved by introspection
    made = await gw.post(
        "/v1/api-keys", json={"name": "ci", "scopes": ["rag:read"]}, headers=bearer
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    by_key = await gw.get("/v1/vector_stores", headers={"x-api-key": key})
    assert by_key.status_code == 200, by_key.text
    kp = verify_internal_token(by_key.json()["principal_header"], DEV_INTERNAL_SECRET)
    assert str(kp.key_id) == made.json()["id"] and kp.scopes == ["rag:read"]
    no_scope = await gw.post("/v1/chat/completions", json={}, headers={"x-api-key": key})
    assert no_scope.status_code == 403

    # revoked: refused within a second
    assert (await gw.delete(f"/v1/api-keys/{made.json()['id']}", headers=bearer)).status_code == 204
    await asyncio.sleep(1.05)
    refused = await gw.get("/v1/vector_stores", headers={"x-api-key": key})
    assert refused.status_code == 401

    # internal routes are not reachable through the gateway
    hidden = await gw.post("/internal/api-keys/introspect", json={"key": key}, headers=bearer)
    assert hidden.status_code == 404


async def test_rotation_without_downtime_through_the_gateway(stack: Stack) -> None:
    gw = stack.gw
    email = new_email()
    await gw.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    old = (await gw.post("/v1/auth/login", json={"email": email, "password": PASSWORD})).json()
    assert (
        await gw.get("/v1/auth/me", headers={"authorization": f"Bearer {old['access_token']}"})
    ).status_code == 200
    rotated = await stack.auth.post("/v1/admin/signing-keys/rotate", headers=SERVICE)
    assert rotated.status_code == 201
    new = (await gw.post("/v1/auth/login", json={"email": email, "password": PASSWORD})).json()
    for tokens in (old, new):
        resp = await gw.get(
            "/v1/auth/me", headers={"authorization": f"Bearer {tokens['access_token']}"}
        )
        assert resp.status_code == 200, resp.text
    # refresh through the gateway, then logout ends the session
    r = await gw.post("/v1/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert r.status_code == 200
    auth = {"authorization": f"Bearer {r.json()['access_token']}"}
    assert (await gw.post("/v1/auth/logout", headers=auth)).status_code == 204
    again = await gw.post("/v1/auth/refresh", json={"refresh_token": r.json()["refresh_token"]})
    assert again.status_code == 401
