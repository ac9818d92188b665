"""Chat completions through the real openai SDK: plain, streamed, tool calls."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from decimal import Decimal
from typing import cast

from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from libs.testing import auth_headers
from services.llm.chat.schemas import ChatCompletionRequest
from services.llm.chat.service import CallOptions
from tests.support.fakes.vendor_common import ToolCall
from tests.support.stacks.llm import Env

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


async def test_plain_chat(env: Env) -> None:
    resp = await env.client.chat.completions.create(model="default", messages=MESSAGES)
    assert resp.choices[0].message.content == "Hello there, how can I help?"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.prompt_tokens == 12
    assert resp.usage.completion_tokens == 7
    assert resp.id.startswith("chatcmpl-")
    # the alias was routed to the provider model, the caller's body forwarded
    sent = env.primary.behavior.last["json"]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == MESSAGES

    events = await env.usage_events()
    assert len(events) == 1
    ev = events[0]
    assert ev["job_id"] == f"usage:chat:{resp.id}"
    assert ev["request_id"] == resp.id
    assert ev["org_id"] == str(env.principal.org_id)
    assert ev["user_id"] == str(env.principal.user_id)
    assert ev["key_id"] == str(env.principal.key_id)
    assert (ev["provider"], ev["model"]) == ("primary", "gpt-4o-mini")
    assert (ev["prompt_tokens"], ev["completion_tokens"]) == (12, 7)
    # 12 * 0.15 / 1M + 7 * 0.60 / 1M
    assert Decimal(ev["cost_usd"]) == Decimal("0.00000600")
    assert ev["status"] == "ok" and ev["cached"] is False
    assert ev["ttft_ms"] is None and ev["latency_ms"] >= 0


async def test_extra_fields_are_forwarded(env: Env) -> None:
    await env.client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        temperature=0.3,
        seed=7,
        stop=["\n"],
        response_format={"type": "json_object"},
        extra_body={"logit_bias": {"50256": -100}, "service_tier": "auto"},
    )
    sent = env.primary.behavior.last["json"]
    assert sent["seed"] == 7 and sent["stop"] == ["\n"]
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["logit_bias"] == {"50256": -100} and sent["service_tier"] == "auto"


async def test_streaming_chunks_in_order_with_final_usage(env: Env) -> None:
    stream = await env.client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, how can I help?"
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.total_tokens == 19
    assert all(c.usage is None for c in chunks[:-1])

    events = await env.usage_events()
    assert len(events) == 1
    assert events[0]["request_id"] == last.id
    assert events[0]["completion_tokens"] == 7
    assert events[0]["ttft_ms"] is not None


async def test_streaming_wire_format(env: Env) -> None:
    async with env.http.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "default", "messages": MESSAGES, "stream": True},
        headers=auth_headers(env.principal),
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = (await resp.aread()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    # no usage asked for: no usage field and no usage chunk
    assert all("usage" not in p and p["choices"] for p in payloads)


async def test_tool_calls(env: Env) -> None:
    env.primary.behavior.reply.tool_calls = [ToolCall("get_weather", {"city": "Paris"})]
    env.primary.behavior.reply.text = ""
    tools: list[ChatCompletionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    resp = await env.client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        tools=tools,
        tool_choice="auto",
    )
    calls = resp.choices[0].message.tool_calls
    assert calls is not None
    call = calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert resp.choices[0].finish_reason == "tool_calls"
    assert env.primary.behavior.last["json"]["tools"] == tools

    stream = await env.client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        tools=tools,
        stream=True,
    )
    name, args, finish = "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name += (delta.function and delta.function.name) or ""
                args += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"}
    assert finish == "tool_calls"


async def test_a_stream_closed_unread_is_settled_once(env: Env) -> None:
    """A streamed answer dropped before its first byte is read (the client left before the
    first write) still closes the upstream, bills one ``cancelled`` usage event and releases
    its Idempotency-Key, so a retry with the key runs instead of waiting on a claim."""
    body = ChatCompletionRequest.model_validate(
        {"model": "default", "messages": MESSAGES, "stream": True}
    )
    options = CallOptions(idempotency_key="unread-stream-1")
    result = await env.service.chat(env.principal, body, options)
    assert result.stream is not None
    await cast(AsyncGenerator[bytes, None], result.stream).aclose()

    events = await env.usage_events()
    assert [e["status"] for e in events] == ["cancelled"]
    assert events[0]["prompt_tokens"] > 0  # the prompt was sent upstream: billed

    again = await env.service.chat(env.principal, body, options)
    assert again.stream is not None
    text = b"".join([chunk async for chunk in again.stream])
    assert text.endswith(b"data: [DONE]\n\n")
    assert len(await env.usage_events()) == 2
