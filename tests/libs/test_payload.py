"""JSON bodies holding what no service can take are refused before any route reads them."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import APIRouter
from pydantic import BaseModel

from libs.app import create_app
from libs.payload import NO_NUL, USABLE_JSON, UnusableValue, check
from libs.settings import ServiceSettings
from libs.testing import client_for


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"a": "x\\u0000y"}', "a"),
        (b'{"a": ["ok", "\\ud800"]}', "a[1]"),
        (b'{"a": {"b": 123456789012345678901234567890}}', "a.b"),
        (b'{"a": -9223372036854775809}', "a"),
        (b'{"a": 18446744073709551615}', "a"),
        (b'{"x\\u0000": 1}', None),
        (b"[1, 1e400]", None),
    ],
)
def test_unusable_values_are_named(raw: bytes, param: str | None) -> None:
    with pytest.raises(UnusableValue) as caught:
        check(raw)
    if param is not None:
        assert caught.value.param == param


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "\\ud83d\\ude00 paired", "n": 9223372036854775807, "m": -9223372036854775808}',
        b'{"text": "1234567890123456789012345 digits inside a string"}',
        b'{"a": 1.5e300, "b": "\\\\u0000 is an escaped backslash, not NUL"}',
        b"not json at all",  # the route answers that itself
        b"",
    ],
)
def test_usable_or_non_json_bodies_pass(raw: bytes) -> None:
    check(raw)


class Body(BaseModel):
    text: str
    n: int = 0
    meta: dict[str, Any] = {}


def _app() -> object:
    router = APIRouter()

    @router.post("/v1/items")
    async def items(body: Body) -> dict[str, object]:
        return {"text": body.text, "n": body.n}

    @router.post("/v1/chat/completions")
    async def chat(body: Body) -> dict[str, object]:
        return {"ok": True}

    return create_app(
        service="toy",
        settings=ServiceSettings(),
        routers=[router],
        use_database=False,
        use_redis=False,
        openai_error_prefixes=("/v1/chat",),
    )


async def test_a_route_never_sees_them_and_the_error_says_where() -> None:
    async with client_for(_app()) as client:  # type: ignore[arg-type]
        ok = await client.post("/v1/items", json={"text": "héllo 你好", "n": 2**63 - 1})
        assert ok.status_code == 200 and ok.json() == {"text": "héllo 你好", "n": 2**63 - 1}
        bad = await client.post(
            "/v1/items",
            content=b'{"text": "a\\u0000b"}',
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert bad.status_code == 400
        error = bad.json()["error"]
        assert error["code"] == "invalid_value"
        assert error["details"][0]["field"] == "body.text"
        assert error["request_id"] == bad.headers["x-request-id"]
        big = await client.post("/v1/items", content=b'{"text": "x", "n": 1e400}')
        assert big.status_code == 400  # no content type: FastAPI reads it as JSON, so do we
        openai = await client.post(
            "/v1/chat/completions",
            content=b'{"text": "\\udfff"}',
            headers={"content-type": "application/json"},
        )
        assert openai.status_code == 400
        assert openai.json()["error"]["param"] == "text"
        assert openai.json()["error"]["type"] == "invalid_request_error"
        # not JSON: the route's own answer, as before
        broken = await client.post(
            "/v1/items", content=b"{oops", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == "malformed_json"


async def test_a_multipart_upload_is_left_alone() -> None:
    async with client_for(_app()) as client:  # type: ignore[arg-type]
        resp = await client.post("/v1/items", files={"f": ("a.txt", b"\x00\xff")})
        assert resp.status_code == 422  # the route wants JSON; the guard did not read it
        assert isinstance(resp, httpx.Response)


def test_the_document_publishes_what_is_refused() -> None:
    """Every app's OpenAPI document says what the guard refuses in request bodies, so that
    clients and fuzzers built from it do not send it: 64-bit integers, text without NUL, and
    free-form values (``Any``, extra fields) held to the same."""
    doc = _app().openapi()  # type: ignore[attr-defined]
    props = doc["components"]["schemas"]["Body"]["properties"]
    assert props["n"]["format"] == "int64"
    assert props["text"]["pattern"] == NO_NUL
    body = jsonschema.Draft202012Validator({**doc, "$ref": "#/components/schemas/Body"})
    usable = {"text": "héllo 你好", "n": 2**63 - 1, "meta": {"k": [1, "ok", {"x": None}]}}
    assert body.is_valid(usable)
    check(httpx.Request("POST", "/", json=usable).content)
    for refused in ({"text": "a\x00b"}, {"text": "ok", "meta": {"k": ["\x00"]}}):
        assert not body.is_valid(refused)
        with pytest.raises(UnusableValue):
            check(httpx.Request("POST", "/", json=refused).content)
    assert USABLE_JSON in doc["components"]["schemas"]
