"""A deprecated route says so in OpenAPI and on every answer (libs/deprecation.py)."""

from __future__ import annotations

from datetime import date

import httpx
import pytest
from fastapi import APIRouter

from libs.app import create_app
from libs.deprecation import deprecated
from libs.errors import NotFound
from libs.settings import ServiceSettings

router = APIRouter()


@router.get(
    "/v1/things/old",
    **deprecated(since=date(2027, 1, 1), sunset=date(2027, 7, 1), link="https://example.com/c"),
)
async def old() -> dict[str, str]:
    return {"ok": "yes"}


@router.get(
    "/v1/things/old/{thing_id}", **deprecated(since=date(2027, 1, 1), sunset=date(2027, 7, 1))
)
async def old_one(thing_id: str) -> dict[str, str]:
    raise NotFound("No such thing", code="thing_not_found")


@router.get("/v1/things/new")
async def new() -> dict[str, str]:
    return {"ok": "yes"}


async def test_deprecated_routes_carry_the_headers_and_are_flagged_in_openapi() -> None:
    app = create_app(
        service="things",
        settings=ServiceSettings(metrics_port=0),
        routers=[router],
        use_database=False,
        use_redis=False,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        resp = await client.get("/v1/things/old")
        assert resp.status_code == 200
        assert resp.headers["deprecation"] == "@1798761600"  # 2027-01-01T00:00:00Z
        assert resp.headers["sunset"] == "Thu, 01 Jul 2027 00:00:00 GMT"
        assert resp.headers["link"] == '<https://example.com/c>; rel="deprecation"'
        # an error its handlers render is still an answer of a deprecated route
        resp = await client.get("/v1/things/old/1")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "thing_not_found"
        assert resp.headers["sunset"] == "Thu, 01 Jul 2027 00:00:00 GMT"
        assert "link" not in resp.headers
        resp = await client.get("/v1/things/new")
        assert "deprecation" not in resp.headers and "sunset" not in resp.headers
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert paths["/v1/things/old"]["get"]["deprecated"] is True
    assert paths["/v1/things/old"]["get"]["x-sunset"] == "2027-07-01"
    assert "deprecated" not in paths["/v1/things/new"]["get"]


def test_a_sunset_sooner_than_the_policy_allows_is_refused() -> None:
    with pytest.raises(ValueError, match="less than 180 days"):
        deprecated(since=date(2027, 1, 1), sunset=date(2027, 3, 1))
