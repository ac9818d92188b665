"""The OpenAI routes through the gateway, in front of the real llm service: every error a
client can get before the route handler runs is in OpenAI's shape, with the right status, so
the ``openai`` SDK raises the matching exception (and keeps the request id)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from redis.asyncio import Redis

from gateway.app import build_app as build_gateway
from gateway.settings import GatewaySettings
from libs.testing import Infra, auth_headers, client_for, principal
from tests.support.fakes.auth_fake import FakeAuth
from tests.support.servers import dead_url, serve
from tests.support.stacks.llm import (
    Upstream,
    fake_openai_upstream,
    gateway_settings,
    openai_behind_gateway,
)

GATEWAY_LIMIT = 50_000
LLM_LIMIT = 20_000


@dataclass
class Stack:
    gateway: str
    llm: str
    auth: FakeAuth
    auth_url: str
    upstream: Upstream
    llm_app: Any


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[Upstream]:
    with fake_openai_upstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
async def stack(
    infra: Infra, fake_openai: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    async with openai_behind_gateway(
        infra,
        tmp_path_factory.mktemp("llm"),
        fake_openai,
        llm={"max_body_bytes": LLM_LIMIT, "request_timeout_s": 10},
        gateway={"max_body_bytes": GATEWAY_LIMIT},
    ) as s:
        yield Stack(s.gateway, s.llm, s.auth, s.auth_url, fake_openai, s.llm_app)


def _settings(infra: Infra, auth_url: str, llm_url: str, **overrides: Any) -> GatewaySettings:
    return gateway_settings(
        infra, auth_url, llm_url, **{"max_body_bytes": GATEWAY_LIMIT, **overrides}
    )


@pytest.fixture
async def gateway(stack: Stack, redis: Redis) -> Stack:
    stack.upstream.reset()
    return stack


def sdk(base: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=20)


def _chat(size: int = 0) -> dict[str, Any]:
    return {
        "model": "default",
        "messages": [{"role": "user", "content": "x" * size or "Hi"}],
    }


def _assert_openai_error(
    exc: openai.APIStatusError, status: int, type_: str, code: str
) -> dict[str, Any]:
    """The body is OpenAI's error object, the SDK read its message, the request id came too."""
    assert exc.status_code == status
    body = exc.response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert err["type"] == type_ and err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    # what the SDK shows: the message itself, not a dump of a foreign body
    assert err["message"] in exc.message and "{" not in exc.message
    assert exc.request_id and exc.request_id == err["request_id"]
    return err


async def test_oversized_chat_refused_by_the_gateway(gateway: Stack) -> None:
    key, _ = gateway.auth.add_api_key()
    client = sdk(gateway.gateway, key)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(**_chat(GATEWAY_LIMIT + 1000))
    err = _assert_openai_error(info.value, 413, "invalid_request_error", "payload_too_large")
    assert str(GATEWAY_LIMIT) in err["message"]
    assert gateway.upstream.chat_calls == 0


async def test_oversized_chat_refused_by_the_llm_service(gateway: Stack) -> None:
    key, _ = gateway.auth.add_api_key()
    client = sdk(gateway.gateway, key)
    # under the gateway's limit, over the service's: the service's 413 passes through as is
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(**_chat(LLM_LIMIT + 1000))
    err = _assert_openai_error(info.value, 413, "invalid_request_error", "payload_too_large")
    assert str(LLM_LIMIT) in err["message"]
    with pytest.raises(openai.APIStatusError) as info:
        await client.embeddings.create(model="embed", input=["x" * (LLM_LIMIT + 1000)])
    err = _assert_openai_error(info.value, 413, "invalid_request_error", "payload_too_large")
    assert str(LLM_LIMIT) in err["message"]
    with pytest.raises(openai.APIStatusError) as info:
        await client.embeddings.create(model="embed", input=["x" * (GATEWAY_LIMIT + 1000)])
    err = _assert_openai_error(info.value, 413, "invalid_request_error", "payload_too_large")
    assert str(GATEWAY_LIMIT) in err["message"]
    assert gateway.upstream.behavior.requests == []


async def _chunks(total: int) -> AsyncIterator[bytes]:
    yield b'{"model": "default", "messages": [{"role": "user", "content": "'
    for _ in range(total // 1000):
        yield b"y" * 1000
    yield b'"}]}'


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
async def test_oversized_streamed_body_is_an_openai_413(
    stack: Stack, infra: Infra, redis: Redis, path: str
) -> None:
    key, _ = stack.auth.add_api_key()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    # the gateway streams a body on as it arrives: the first limit crossed answers
    small = await serve(
        build_gateway(_settings(infra, stack.auth_url, stack.llm, max_body_bytes=5000))
    )
    try:
        for base, limit in ((small.url, 5000), (stack.gateway, LLM_LIMIT)):
            async with httpx.AsyncClient(base_url=base, timeout=20) as client:
                # no Content-Length: counted as it arrives
                resp = await client.post(path, content=_chunks(LLM_LIMIT + 5000), headers=headers)
            assert resp.status_code == 413, resp.text
            err = resp.json()["error"]
            assert err["type"] == "invalid_request_error" and err["code"] == "payload_too_large"
            assert str(limit) in err["message"]
            assert err["request_id"] == resp.headers["x-request-id"]
    finally:
        await small.stop()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
async def test_llm_service_refuses_a_streamed_body_over_its_limit(
    gateway: Stack, path: str
) -> None:
    # straight at the service (its hot route reads the body itself): a 413, not a 500
    async with client_for(gateway.llm_app, base_url="http://llm.test") as client:
        headers = {**auth_headers(principal()), "content-type": "application/json"}
        resp = await client.post(path, content=_chunks(LLM_LIMIT + 5000), headers=headers)
    assert resp.status_code == 413, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "payload_too_large"
    assert err["request_id"] == resp.headers["x-request-id"]


async def test_missing_bad_and_unscoped_credentials(gateway: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as auth_info:
        await sdk(gateway.gateway, "ask_" + "n" * 40).chat.completions.create(**_chat())
    _assert_openai_error(auth_info.value, 401, "authentication_error", "invalid_api_key")
    with pytest.raises(openai.AuthenticationError) as auth_info:
        await sdk(gateway.gateway, "not-a-token").models.list()
    # what an SDK sends as its api_key is a key to the caller, whatever its shape
    _assert_openai_error(auth_info.value, 401, "authentication_error", "invalid_api_key")
    async with httpx.AsyncClient(base_url=gateway.gateway) as client:
        resp = await client.post("/v1/embeddings", json={"model": "embed", "input": "x"})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    assert resp.headers["www-authenticate"].startswith("Bearer")

    key, _ = gateway.auth.add_api_key(scopes=["jobs:read"])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await sdk(gateway.gateway, key).embeddings.create(model="embed", input="x")
    _assert_openai_error(denied.value, 403, "permission_error", "insufficient_scope")


async def test_bad_requests(gateway: Stack) -> None:
    key, _ = gateway.auth.add_api_key()
    client = sdk(gateway.gateway, key)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(**{**_chat(), "model": "no-such-model"})
    assert missing.value.status_code == 404
    _assert_openai_error(missing.value, 404, "invalid_request_error", "model_not_found")
    with pytest.raises(openai.BadRequestError) as bad:
        await client.embeddings.create(model="embed", input="x", extra_body={"dimensions": "a"})
    err = _assert_openai_error(bad.value, 400, "invalid_request_error", "invalid_request")
    assert err["param"] == "dimensions"
    async with httpx.AsyncClient(base_url=gateway.gateway) as raw:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        resp = await raw.post("/v1/chat/completions", content=b"{not json", headers=headers)
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "invalid_request_error"
        assert resp.json()["error"]["code"] == "malformed_json"
        # JSON not declared as such is not read as JSON (as FastAPI): invalid body
        resp = await raw.post(
            "/v1/chat/completions",
            content=b'{"model": "default", "messages": [{"role": "user", "content": "x"}]}',
            headers={**headers, "content-type": "text/plain"},
        )
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "invalid_request_error"
        resp = await raw.get("/v1/chat/completions", headers=headers)
        assert resp.status_code == 405
        assert resp.json()["error"]["code"] == "method_not_allowed"
        assert resp.json()["error"]["type"] == "invalid_request_error"
        # an OpenAI path the service does not serve: a 404 its SDKs still read
        resp = await raw.post("/v1/chat/unknown", json={"model": "default"}, headers=headers)
        assert resp.status_code == 404
        assert resp.json()["error"]["type"] == "invalid_request_error"
    assert gateway.upstream.chat_calls == 0


async def test_rate_limited_key(gateway: Stack) -> None:
    key, _ = gateway.auth.add_api_key(rpm_limit=1)
    client = sdk(gateway.gateway, key)
    await client.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(**_chat())
    _assert_openai_error(limited.value, 429, "rate_limit_error", "rate_limited")
    assert int(limited.value.response.headers["retry-after"]) >= 1


async def test_llm_service_down_or_slow(stack: Stack, infra: Infra, redis: Redis) -> None:
    key, _ = stack.auth.add_api_key()
    down = await serve(build_gateway(_settings(infra, stack.auth_url, dead_url())))
    try:
        with pytest.raises(openai.InternalServerError) as unavailable:
            await sdk(down.url, key).chat.completions.create(**_chat())
    finally:
        await down.stop()
    _assert_openai_error(unavailable.value, 503, "api_error", "service_unavailable")
    assert int(unavailable.value.response.headers["retry-after"]) >= 1

    stack.upstream.reset()
    stack.upstream.behavior.delay = 2
    slow = await serve(
        build_gateway(_settings(infra, stack.auth_url, stack.llm, upstream_read_timeout=0.3))
    )
    try:
        with pytest.raises(openai.InternalServerError) as timed_out:
            await sdk(slow.url, key).chat.completions.create(**_chat())
    finally:
        await slow.stop()
        stack.upstream.reset()
    _assert_openai_error(timed_out.value, 504, "api_error", "gateway_timeout")
