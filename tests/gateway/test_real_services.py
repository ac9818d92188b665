"""The gateway in front of the real service apps, on real PostgreSQL and Redis."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.datastructures import Headers

from gateway import security
from gateway.app import build_app
from gateway.routes import Route
from gateway.settings import SERVICES, GatewaySettings
from libs.identity import Principal
from libs.testing import Infra, principal
from tests.gateway.conftest import serve


@pytest.fixture(scope="module")
async def real_gateway(infra: Infra) -> AsyncIterator[str]:
    running = {}
    for name in SERVICES:
        module = importlib.import_module(f"services.{name}.app")
        running[name] = await serve(module.build_app())
    settings = GatewaySettings.model_validate(
        {"use_redis": True, **{f"{n}_url": r.url for n, r in running.items()}}
    )
    gw = await serve(build_app(settings))
    yield gw.url
    for r in (gw, *running.values()):
        await r.stop()


async def test_ready_and_openapi_with_real_services(real_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=real_gateway) as client:
        resp = await client.get("/ready")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["services"] == {n: {"status": "ready"} for n in SERVICES}
        assert body["checks"] == {"redis": {"status": "ok"}}
        doc = (await client.get("/openapi.json")).json()
        assert "/v1/knowledge-bases/{kb_id}" in doc["paths"]
        assert "KnowledgeBaseOut" in doc["components"]["schemas"]


async def test_identity_reaches_the_service_signed(
    real_gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with httpx.AsyncClient(base_url=real_gateway) as client:
        # no principal: the service's 401 passes through in the error shape
        resp = await client.get("/v1/knowledge-bases")
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "unauthorized"

        p: Principal = principal(org_id=uuid.uuid4())

        async def resolve(headers: Headers, route: Route) -> Principal | None:
            return p

        monkeypatch.setattr(security, "resolve_principal", resolve)
        resp = await client.post("/v1/knowledge-bases", json={"name": "via gateway"})
        assert resp.status_code == 201, resp.text
        kb = resp.json()
        resp = await client.get(f"/v1/knowledge-bases/{kb['id']}")
        assert resp.status_code == 200
        assert resp.json()["name"] == "via gateway"

        # another tenant sees nothing of it
        other: Principal = principal(org_id=uuid.uuid4())

        async def resolve_other(headers: Headers, route: Route) -> Principal | None:
            return other

        monkeypatch.setattr(security, "resolve_principal", resolve_other)
        resp = await client.get(f"/v1/knowledge-bases/{kb['id']}")
        assert resp.status_code == 404
