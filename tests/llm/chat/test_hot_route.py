"""The chat fast path stays in step with its declared FastAPI endpoint: the same requests, sent
to the app as it runs (the hot route, services/llm/chat/hot_route.py) and to the same app with
the hot route off (FastAPI's route, as declared in services/llm/chat/router.py), get the same
answers: statuses, headers, error types, codes and params. (Error messages are not compared:
for a body that is not JSON, pydantic words the same error differently when FastAPI
validates it.)"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from libs.app import App
from libs.testing import auth_headers, principal
from services.llm.chat.hot_route import ChatEndpoint
from tests.support.stacks.llm import Env

URL = "/v1/chat/completions"
BODY = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}


def _requests(env: Env, key: str) -> list[dict[str, Any]]:
    user = auth_headers(env.principal)
    viewer = auth_headers(principal(key_id=uuid.uuid4(), scopes=["rag:read"]))
    raw = b'{"model":"default","messages":[{"role":"user","content":"Hi"}]}'
    ctype = {"content-type": "application/json"}
    return [
        {"json": {"model": 5}},  # no caller: 401 before the body is looked at
        {"json": {"model": 5}, "headers": viewer},  # no llm:use scope: 403
        {"headers": user},  # no body
        {"content": raw, "headers": {**user, "content-type": "text/plain"}},  # not JSON
        {"content": raw, "headers": user},  # JSON not declared
        {"content": b'{"model": ', "headers": {**user, "content-type": "application/json"}},
        {
            "content": b'{"model": "default", "messages": [], "temperature": NaN}',
            "headers": {**user, "content-type": "application/json"},
        },
        {"json": {"model": "default"}, "headers": user},  # messages missing
        {"json": {**BODY, "model": "nope"}, "headers": user},  # unknown model
        {"content": raw, "headers": {**user, "content-type": "application/vnd.api+json"}},
        {"json": BODY, "headers": {**user, "x-aistack-timeout": "soon"}},
        {  # a miss each time: the same app runs both passes
            "json": {**BODY, "messages": [{"role": "user", "content": key}]},
            "headers": {**user, "x-aistack-cache": "true"},
        },
        {"json": {**BODY, "stream": True}, "headers": user},
        {"json": BODY, "headers": {**user, "Idempotency-Key": key}},
        {"json": BODY, "headers": {**user, "Idempotency-Key": key}},  # the replay
        # bodies the parser gives up on: both once answered 500 on the hot route
        {"content": b'{"model": "\xff\xfe"}', "headers": {**user, **ctype}},  # not UTF-8
        {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {**user, **ctype}},  # too deep
    ]


async def _answers(env: Env) -> list[tuple[Any, ...]]:
    out = []
    for request in _requests(env, f"hot-{uuid.uuid4().hex}"):
        resp = await env.http.post(URL, **request)
        out.append(_comparable(resp))
    return out


def _comparable(resp: httpx.Response) -> tuple[Any, ...]:
    headers = {
        k: v
        for k, v in resp.headers.items()
        if k in ("content-type", "x-aistack-cache", "x-aistack-idempotent-replay")
    }
    if resp.headers["content-type"].startswith("application/json"):
        body = resp.json()
        if "error" in body:
            error = {k: v for k, v in body["error"].items() if k not in ("request_id", "message")}
            return resp.status_code, headers, error
        return resp.status_code, headers, body["object"], body["choices"]
    return resp.status_code, headers, resp.text.count("data: ")


async def test_the_declared_endpoint_answers_as_the_hot_route(env: Env) -> None:
    app = env.app
    assert isinstance(app, App)
    hot = await _answers(env)
    app.set_hot_route(lambda scope: False, ChatEndpoint())  # off: FastAPI's route serves it
    through_fastapi = await _answers(env)
    assert [a[0] for a in hot] == [
        401, 403, 400, 400, 400, 400, 400, 400, 404, 200, 400, 200, 200, 200, 200, 400, 400
    ]  # fmt: skip
    assert through_fastapi == hot
