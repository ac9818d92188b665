"""Response cache, Idempotency-Key, and the tokens-per-minute limit."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from libs.testing import auth_headers, principal
from tests.support.fakes.vendor_common import ToolCall
from tests.support.stacks.llm import Env

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 2+2?"}]


async def test_temperature_zero_is_cached_per_org_and_replayed_as_stream(env: Env) -> None:
    first = await env.client.chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, temperature=0
    )
    assert first.headers["x-aistack-cache"] == "miss"
    await env.service.drain()  # the cache write happens off the response path
    second = await env.client.chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, temperature=0
    )
    assert second.headers["x-aistack-cache"] == "hit"
    assert env.primary.chat_calls == 1
    a, b = first.parse(), second.parse()
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.id != b.id  # each call is its own request

    stream = await env.client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, how can I help?"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert env.primary.chat_calls == 1

    # another organization never sees this org's entries
    other = env.sdk(principal())
    await other.chat.completions.create(model="default", messages=MESSAGES, temperature=0)
    assert env.primary.chat_calls == 2

    events = await env.usage_events()
    assert len(events) == 4
    cached = [e for e in events if e["cached"]]
    assert len(cached) == 2
    assert all(Decimal(e["cost_usd"]) == 0 and e["prompt_tokens"] == 12 for e in cached)


async def test_a_cached_tool_call_replays_as_openai_streams_it(env: Env) -> None:
    env.primary.behavior.reply.text = ""
    env.primary.behavior.reply.tool_calls = [ToolCall("get_weather", {"city": "Paris"})]
    body: dict[str, Any] = {"model": "default", "messages": MESSAGES, "temperature": 0}
    headers = auth_headers(env.principal)
    miss = await env.http.post("/v1/chat/completions", json=body, headers=headers)
    [call] = miss.json()["choices"][0]["message"]["tool_calls"]
    await env.service.drain()  # the cache write happens off the response path
    async with env.http.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers
    ) as resp:
        assert resp.headers["x-aistack-cache"] == "hit"
        raw = (await resp.aread()).decode()
    assert env.primary.chat_calls == 1
    payloads = [json.loads(e.removeprefix("data: ")) for e in raw.split("\n\n")[:-2]]
    # the role comes with the call, content null: no empty text part before it
    assert [p["choices"][0]["delta"] for p in payloads] == [
        {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}]},
        {},
    ]
    assert payloads[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_streamed_miss_fills_the_cache(env: Env) -> None:
    stream = await env.client.chat.completions.create(
        model="default", messages=MESSAGES, stream=True, extra_headers={"x-aistack-cache": "true"}
    )
    _ = [c async for c in stream]
    await env.service.drain()
    resp = await env.client.chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, extra_body={"cache": True}
    )
    assert resp.headers["x-aistack-cache"] == "hit"
    assert resp.parse().choices[0].message.content == "Hello there, how can I help?"
    assert env.primary.chat_calls == 1


async def test_nondeterministic_requests_are_not_cached(env: Env) -> None:
    for _ in range(2):
        await env.client.chat.completions.create(model="default", messages=MESSAGES)
    await env.client.chat.completions.create(
        model="default", messages=MESSAGES, temperature=0, extra_headers={"x-aistack-cache": "off"}
    )
    assert env.primary.chat_calls == 3


async def test_idempotency_key_returns_the_first_result(env: Env) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await env.client.chat.completions.create(
        model="default", messages=MESSAGES, extra_headers=headers
    )
    await env.service.drain()
    again = await env.client.chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, extra_headers=headers
    )
    assert again.headers["x-aistack-idempotent-replay"] == "true"
    assert again.parse().id == first.id
    assert env.primary.chat_calls == 1
    # a retried streamed request gets the same answer as a stream
    stream = await env.client.chat.completions.create(
        model="default", messages=MESSAGES, stream=True, extra_headers=headers
    )
    ids = {c.id async for c in stream}
    assert ids == {first.id}
    # one call, one usage event
    events = await env.usage_events()
    assert [e["request_id"] for e in events] == [first.id]

    with pytest.raises(openai.UnprocessableEntityError) as exc:
        await env.client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "other"}], extra_headers=headers
        )
    assert exc.value.code == "idempotency_key_reused"


async def test_concurrent_duplicate_waits_for_the_first(env: Env) -> None:
    env.primary.behavior.delay = 0.3
    headers = {"Idempotency-Key": "same"}

    async def call() -> Any:
        return await env.client.chat.completions.create(
            model="default", messages=MESSAGES, extra_headers=headers
        )

    a, b = await asyncio.gather(call(), call())
    assert a.id == b.id
    assert env.primary.chat_calls == 1
    assert len(await env.usage_events()) == 1


@pytest.mark.parametrize("llm_overrides", [{"idempotency_wait_s": 0.05}])
async def test_concurrent_duplicate_gets_409_when_the_first_takes_long(env: Env) -> None:
    env.primary.behavior.delay = 0.5
    headers = {"Idempotency-Key": "slow"}
    first = asyncio.create_task(
        env.client.chat.completions.create(
            model="default", messages=MESSAGES, extra_headers=headers
        )
    )
    await asyncio.sleep(0.1)
    with pytest.raises(openai.ConflictError) as exc:
        await env.client.chat.completions.create(
            model="default", messages=MESSAGES, extra_headers=headers
        )
    assert exc.value.code == "idempotency_key_in_progress"
    await first


async def test_failed_first_attempt_frees_the_idempotency_key(env: Env) -> None:
    env.primary.behavior.status = 500
    headers = {"Idempotency-Key": "retry-me"}
    with pytest.raises(openai.InternalServerError):
        await env.client.chat.completions.create(
            model="default", messages=MESSAGES, extra_headers=headers
        )
    await env.service.drain()
    env.primary.behavior.status = None
    resp = await env.client.chat.completions.create(
        model="default", messages=MESSAGES, extra_headers=headers
    )
    assert resp.choices[0].message.content


async def test_key_tpm_limit(env: Env) -> None:
    limited = principal(key_id=uuid.uuid4()).model_copy(update={"tpm_limit": 60})
    client = env.sdk(limited)
    # estimate: 3 priming + 4 framing + ceil(12 chars / 4) + max_tokens 40 = 50 tokens
    await client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=40)
    with pytest.raises(openai.RateLimitError) as exc:
        await client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=40)
    assert exc.value.code == "tokens_per_minute_exceeded"
    assert int(exc.value.response.headers["retry-after"]) >= 1
    assert env.primary.chat_calls == 1
    # a request bigger than the whole limit can never pass
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=100)
    # the limit is the key's: another key of the same org is not affected
    other = env.sdk(principal(org_id=limited.org_id, key_id=uuid.uuid4()))
    await other.chat.completions.create(model="default", messages=MESSAGES, max_tokens=40)
    assert len(await env.usage_events()) == 2


@pytest.mark.parametrize("llm_overrides", [{"org_tpm_limit": 100}])
async def test_org_tpm_limit(env: Env) -> None:
    org = uuid.uuid4()
    a = env.sdk(principal(org_id=org, key_id=uuid.uuid4()))
    b = env.sdk(principal(org_id=org))
    # the answers use all 50 tokens estimated: nothing is refunded (see test_tpm_refund.py)
    env.primary.behavior.reply.completion_tokens = 38
    await a.chat.completions.create(model="default", messages=MESSAGES, max_tokens=40)
    await b.chat.completions.create(model="default", messages=MESSAGES, max_tokens=40)
    with pytest.raises(openai.RateLimitError):
        await a.chat.completions.create(model="default", messages=MESSAGES, max_tokens=40)
    # another organization has its own budget
    await env.client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=40)


@pytest.mark.parametrize("llm_overrides", [{"tpm_completion_reserve": 1}])
async def test_tokens_beyond_the_estimate_count_against_the_limit(env: Env) -> None:
    limited = principal(key_id=uuid.uuid4()).model_copy(update={"tpm_limit": 60})
    client = env.sdk(limited)
    # estimated 11 tokens up front, but the answer used 12 + 45 = 57
    env.primary.behavior.reply.completion_tokens = 45
    await client.chat.completions.create(model="default", messages=MESSAGES)
    await env.service.drain()
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="default", messages=MESSAGES)
