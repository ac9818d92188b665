"""The chat route's own request handling (it skips FastAPI's dependency solving): the same
answers FastAPI gave, in the same order, and the same OpenAPI description."""

from __future__ import annotations

import uuid

from libs.testing import auth_headers, principal
from tests.support.stacks.llm import Env

URL = "/v1/chat/completions"
BODY = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}


async def test_credentials_are_checked_before_the_body(env: Env) -> None:
    # a bad body from an unauthenticated caller: 401, not 400
    resp = await env.http.post(URL, json={"model": 5})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    viewer = principal(key_id=uuid.uuid4(), scopes=["rag:read"])
    resp = await env.http.post(URL, json={"model": 5}, headers=auth_headers(viewer))
    assert resp.status_code == 403
    assert env.primary.chat_calls == 0


async def test_missing_wrong_and_non_json_bodies_are_400(env: Env) -> None:
    headers = auth_headers(env.principal)
    resp = await env.http.post(URL, headers=headers)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_request"

    resp = await env.http.post(
        URL, content=b"model=default", headers={**headers, "content-type": "text/plain"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_request"

    resp = await env.http.post(URL, json={"model": "default"}, headers=headers)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "messages" and error["type"] == "invalid_request_error"

    resp = await env.http.post(
        URL, content=b'{"model": ', headers={**headers, "content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "malformed_json"
    assert env.primary.chat_calls == 0


async def test_json_content_types_and_option_headers(env: Env) -> None:
    headers = auth_headers(env.principal)
    raw = b'{"model":"default","messages":[{"role":"user","content":"Hi"}]}'
    for ctype in ("application/json; charset=utf-8", "application/vnd.api+json"):
        resp = await env.http.post(URL, content=raw, headers={**headers, "content-type": ctype})
        assert resp.status_code == 200, (ctype, resp.text)
    # JSON must be declared (FastAPI's strict content type)
    resp = await env.http.post(URL, content=raw, headers=headers)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_request"
    # the option headers still reach the service
    resp = await env.http.post(URL, json=BODY, headers={**headers, "x-aistack-timeout": "soon"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_timeout"
    resp = await env.http.post(URL, json=BODY, headers={**headers, "x-aistack-cache": "true"})
    assert resp.headers["x-aistack-cache"] == "miss"
    first = await env.http.post(URL, json=BODY, headers={**headers, "Idempotency-Key": "k-1"})
    again = await env.http.post(URL, json=BODY, headers={**headers, "idempotency-key": "k-1"})
    assert again.headers["x-aistack-idempotent-replay"] == "true"
    assert again.json()["id"] == first.json()["id"]


def test_openapi_still_describes_body_and_headers(env: Env) -> None:
    op = env.app.openapi()["paths"][URL]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    names = {p["name"] for p in op["parameters"]}
    assert names == {"Idempotency-Key", "x-aistack-cache", "x-aistack-timeout"}


async def test_a_timeout_no_provider_could_meet_is_a_400_not_a_504(env: Env) -> None:
    """5e-324 s (what a fuzzer sent) expired before any call and was answered 504."""
    headers = auth_headers(env.principal)
    for timeout in (5e-324, 0.01):
        resp = await env.http.post(URL, json={**BODY, "timeout": timeout}, headers=headers)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "timeout"
    for value in ("1e-300", "nan", "-inf", "inf"):
        resp = await env.http.post(URL, json=BODY, headers={**headers, "x-aistack-timeout": value})
        assert resp.status_code == 400, (value, resp.text)
        assert resp.json()["error"]["code"] == "invalid_timeout"
    resp = await env.http.post(URL, json={**BODY, "timeout": 0.1}, headers=headers)
    assert resp.status_code == 200, resp.text
