"""Errors in OpenAI's shape, so the SDK raises the right exception types."""

from __future__ import annotations

import uuid

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from libs.testing import auth_headers, principal
from tests.support.stacks.llm import Env

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


async def test_400_invalid_body(env: Env) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await env.client.chat.completions.create(model="default", messages=MESSAGES, temperature=5)
    assert exc.value.status_code == 400
    body = exc.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    assert body["param"] == "temperature"
    resp = await env.http.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers={**auth_headers(env.principal), "content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "malformed_json"
    assert env.primary.chat_calls == 0


async def test_400_from_upstream_is_not_retried(env: Env) -> None:
    env.primary.behavior.status = 400
    env.primary.behavior.error_message = "This model's maximum context length is 128000 tokens"
    with pytest.raises(openai.BadRequestError) as exc:
        await env.client.chat.completions.create(model="fallback", messages=MESSAGES)
    assert "maximum context length" in exc.value.message
    assert env.primary.chat_calls == 1 and env.backup.chat_calls == 0
    events = await env.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_401_without_identity(env: Env) -> None:
    anonymous = openai.AsyncOpenAI(
        base_url="http://llm.test/v1", api_key="x", http_client=env.sdk_http, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as exc:
        await anonymous.chat.completions.create(model="default", messages=MESSAGES)
    assert exc.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        await anonymous.models.list()


async def test_403_without_llm_scope(env: Env) -> None:
    reader = env.sdk(principal(scopes=["rag:read"], key_id=uuid.uuid4()))
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await reader.chat.completions.create(model="default", messages=MESSAGES)
    assert exc.value.code == "insufficient_scope"


async def test_404_unknown_model(env: Env) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        await env.client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert exc.value.code == "model_not_found"
    assert await env.usage_events() == []


async def test_429_from_upstream_everywhere(env: Env) -> None:
    env.primary.behavior.status = 429
    env.primary.behavior.retry_after = "20"  # longer than we wait: no same-target retry
    with pytest.raises(openai.RateLimitError) as exc:
        await env.client.chat.completions.create(model="default", messages=MESSAGES)
    assert exc.value.response.headers["retry-after"] == "20"
    assert env.primary.chat_calls == 1
    events = await env.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_5xx_everywhere_is_a_502(env: Env) -> None:
    env.primary.behavior.status = 503
    with pytest.raises(openai.InternalServerError) as exc:
        await env.client.chat.completions.create(model="default", messages=MESSAGES)
    assert exc.value.status_code == 502
    assert env.primary.chat_calls == 2  # one retry of the only target


async def test_streamed_request_failing_before_first_chunk_gets_a_status(env: Env) -> None:
    env.primary.behavior.status = 500
    with pytest.raises(openai.InternalServerError):
        await env.client.chat.completions.create(model="default", messages=MESSAGES, stream=True)
    events = await env.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_stream_breaking_midway_reports_in_band(env: Env) -> None:
    env.primary.behavior.break_after = 400
    stream = await env.client.chat.completions.create(
        model="fallback", messages=MESSAGES, stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert got, "bytes reached the client before the break"
    assert "Upstream stream failed" in exc.value.message
    # after the first byte nothing is retried elsewhere
    assert env.backup.chat_calls == 0
    events = await env.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"
