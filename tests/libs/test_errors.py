"""Every error kind renders the one JSON shape with a request id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from libs.app import create_app
from libs.errors import Conflict, NotFound, RateLimited
from libs.settings import ServiceSettings
from libs.testing import running


class Item(BaseModel):
    name: str
    count: int


def _app(max_body: int = 1024) -> FastAPI:
    router = APIRouter()

    @router.post("/items")
    async def create(item: Item) -> dict[str, object]:
        return {"name": item.name, "count": item.count}

    @router.get("/missing")
    async def missing() -> None:
        raise NotFound("Widget not found", code="widget_not_found")

    @router.get("/conflict")
    async def conflict() -> None:
        raise Conflict("Already there", details={"field": "name"})

    @router.get("/limited")
    async def limited() -> None:
        raise RateLimited(headers={"Retry-After": "3"})

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    @router.post("/openai/thing")
    async def openai_thing(item: Item) -> dict[str, str]:
        return {"ok": "yes"}

    settings = ServiceSettings(max_body_bytes=max_body)
    return create_app(
        service="errtest",
        settings=settings,
        routers=[router],
        use_database=False,
        use_redis=False,
        openai_error_prefixes=("/openai",),
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = _app()
    async with running(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


def _assert_shape(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    assert err["request_id"] == resp.headers["x-request-id"]
    return err


async def test_domain_error(client: httpx.AsyncClient) -> None:
    err = _assert_shape(await client.get("/missing"), 404, "widget_not_found")
    assert err["message"] == "Widget not found"
    err = _assert_shape(await client.get("/conflict"), 409, "conflict")
    assert err["details"] == {"field": "name"}


async def test_domain_error_headers(client: httpx.AsyncClient) -> None:
    resp = await client.get("/limited")
    _assert_shape(resp, 429, "rate_limited")
    assert resp.headers["retry-after"] == "3"


async def test_validation_error_lists_field_paths(client: httpx.AsyncClient) -> None:
    resp = await client.post("/items", json={"name": "x", "count": "many"})
    err = _assert_shape(resp, 422, "validation_error")
    fields = {d["field"] for d in err["details"]}  # type: ignore[attr-defined]
    assert fields == {"body.count"}
    resp = await client.post("/items", json={})
    err = _assert_shape(resp, 422, "validation_error")
    assert {d["field"] for d in err["details"]} == {"body.name", "body.count"}  # type: ignore[attr-defined]


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/items", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    _assert_shape(resp, 400, "malformed_json")


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    _assert_shape(await client.get("/nope/nothing"), 404, "not_found")
    _assert_shape(await client.delete("/items"), 405, "method_not_allowed")


async def test_body_over_limit_declared_and_streamed(client: httpx.AsyncClient) -> None:
    big = b'{"name": "' + b"x" * 5000 + b'", "count": 1}'
    _assert_shape(
        await client.post("/items", content=big, headers={"content-type": "application/json"}),
        413,
        "payload_too_large",
    )

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    resp = await client.post(
        "/items", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_shape(resp, 413, "payload_too_large")


async def test_unhandled_exception_hides_internals(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    resp = await client.get("/boom")
    err = _assert_shape(resp, 500, "internal_error")
    assert "hunter2" not in resp.text and "Traceback" not in resp.text
    assert err["message"] == "Internal server error"
    assert any("hunter2" in (r.exc_text or str(r.exc_info)) for r in caplog.records if r.exc_info)


async def test_request_id_is_propagated_from_client(client: httpx.AsyncClient) -> None:
    resp = await client.get("/missing", headers={"x-request-id": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    assert resp.json()["error"]["request_id"] == "abc-123"
    # garbage request ids are replaced, not echoed
    resp = await client.get("/missing", headers={"x-request-id": "bad id\twith spaces"})
    assert resp.headers["x-request-id"] != "bad id\twith spaces"


async def test_openai_routes_use_openai_shape(client: httpx.AsyncClient) -> None:
    resp = await client.post("/openai/thing", json={"name": "x"})
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == "body.count"
    assert "message" in err and "code" in err
