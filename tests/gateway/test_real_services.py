"""The gateway in front of the real service apps, on real PostgreSQL and Redis."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from gateway.app import build_app
from gateway.settings import GatewaySettings
from libs.entitlements import DEFAULT_KEY
from libs.registry import NAMES
from libs.testing import Infra
from tests.support.servers import serve
from tests.support.stacks.stand_ins import FAKE_AUTH


@pytest.fixture(scope="module")
async def real_gateway(infra: Infra) -> AsyncIterator[str]:
    running = {}
    for name in NAMES:
        module = importlib.import_module(f"services.{name}.app")
        running[name] = await serve(module.build_app())
    # tokens signed by the test's keys, not by the auth service's own
    keys = await serve(FAKE_AUTH.app())
    settings = GatewaySettings.model_validate(
        {
            "use_redis": True,
            "jwks_url": f"{keys.url}/.well-known/jwks.json",
            **{f"{n}_url": r.url for n, r in running.items()},
        }
    )
    gw = await serve(build_app(settings))
    yield gw.url
    for r in (gw, keys, *running.values()):
        await r.stop()
    # billing published its default plan's entitlements at start: later tests that keep
    # Redis as is would take them as every unknown organization's limits
    redis = Redis.from_url(infra.redis_url)
    try:
        await redis.delete(DEFAULT_KEY)
    finally:
        await redis.aclose()


async def test_ready_and_openapi_with_real_services(real_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=real_gateway) as client:
        resp = await client.get("/ready")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["services"] == {n: {"status": "ready"} for n in NAMES}
        assert body["checks"] == {"redis": {"status": "ok"}}
        doc = (await client.get("/openapi.json")).json()
        assert "/v1/files/{file_id}" in doc["paths"]
        assert "FileObject" in doc["components"]["schemas"]


async def test_identity_reaches_the_service_signed(real_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=real_gateway) as client:
        # no credentials: refused at the gateway in the error shape
        resp = await client.get("/v1/files")
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "unauthorized"

        mine = {"authorization": f"Bearer {FAKE_AUTH.token(org_id=uuid.uuid4())}"}
        resp = await client.post(
            "/v1/files",
            files={"file": ("via-gateway.txt", b"hello")},
            data={"purpose": "assistants"},
            headers=mine,
        )
        assert resp.status_code == 200, resp.text
        f = resp.json()
        resp = await client.get(f"/v1/files/{f['id']}", headers=mine)
        assert resp.status_code == 200
        assert resp.json()["filename"] == "via-gateway.txt"

        # another tenant sees nothing of it
        theirs = {"authorization": f"Bearer {FAKE_AUTH.token(org_id=uuid.uuid4())}"}
        resp = await client.get(f"/v1/files/{f['id']}", headers=theirs)
        assert resp.status_code == 404
