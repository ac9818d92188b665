"""``/v1/completions`` through the gateway, in front of the real llm service (real sockets),
with the real ``openai`` SDK and an API key: answers, streams, errors in OpenAI's shape, and a
client that hangs up mid-stream."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
from redis.asyncio import Redis

from libs.usage import USAGE_STREAM
from tests.support.ledger import stream_events
from tests.support.stacks.llm import (
    LlmStack,
    Upstream,
)

REPLY = "Hello there, how can I help?"


@pytest.fixture
async def gw(openai_stack: LlmStack, fake_openai: Upstream, redis: Redis) -> LlmStack:
    fake_openai.reset()
    return openai_stack


async def _usage(redis: Redis, n: int, within: float = 5) -> list[dict[str, object]]:
    """The usage events on the usage stream, once there are ``n`` (or ``within`` is over)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await redis.xlen(USAGE_STREAM) >= n:
            break
        await asyncio.sleep(0.05)
    return await stream_events(redis)


async def test_answer_and_stream_through_the_gateway(gw: LlmStack, redis: Redis) -> None:
    key, _ = gw.auth.add_api_key()
    client = gw.sdk(key)
    resp = await client.completions.create(model="default", prompt="Say hello", max_tokens=20)
    assert resp.object == "text_completion" and resp.choices[0].text == REPLY
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.total_tokens == 19

    stream = await client.completions.create(
        model="default",
        prompt="Say hello",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert len(chunks) > 2 and all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == REPLY
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 19
    # one usage event per call
    events = await _usage(redis, 2)
    await asyncio.sleep(0.2)
    assert len(events) == 2 and await redis.xlen(USAGE_STREAM) == 2
    assert {e["request_id"] for e in events} == {
        "chatcmpl-" + resp.id.removeprefix("cmpl-"),
        "chatcmpl-" + chunks[0].id.removeprefix("cmpl-"),
    }


async def test_errors_in_openai_shape(gw: LlmStack, fake_openai: Upstream) -> None:
    with pytest.raises(openai.AuthenticationError):
        await gw.sdk("ask_" + "n" * 40).completions.create(model="default", prompt="Hi")
    key, _ = gw.auth.add_api_key(scopes=["jobs:read"])
    with pytest.raises(openai.PermissionDeniedError):
        await gw.sdk(key).completions.create(model="default", prompt="Hi")

    key, _ = gw.auth.add_api_key()
    client = gw.sdk(key)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.completions.create(model="no-such-model", prompt="Hi")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.completions.create(model="default", prompt="Hi", suffix="!")
    err = bad.value.response.json()["error"]
    assert (err["type"], err["param"], err["code"]) == (
        "invalid_request_error",
        "suffix",
        "unsupported_parameter",
    )
    assert fake_openai.chat_calls == 0


async def test_client_leaving_a_list_stream_closes_every_call(
    gw: LlmStack, fake_openai: Upstream, redis: Redis
) -> None:
    # every call sends its first chunks, then goes silent for 30 s
    fake_openai.behavior.stall_after = 600
    key, _ = gw.auth.add_api_key()
    stream = await gw.sdk(key).completions.create(
        model="default", prompt=["one", "two"], stream=True
    )
    async for _chunk in stream:
        break  # got text; now hang up
    await stream.close()
    # both upstream calls are closed, each billed once as cut short
    events = await _usage(redis, 2)
    assert sorted(str(e["status"]) for e in events) == ["cancelled", "cancelled"]
    assert all(int(str(e["completion_tokens"])) > 0 for e in events)
