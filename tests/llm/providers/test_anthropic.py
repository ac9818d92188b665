"""Anthropic adapter against a fake Messages API speaking the real wire format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.embedded import free_port
from services.llm.providers.anthropic import AnthropicProvider
from services.llm.providers.base import ChatRequest, ProviderError
from tests.support.fakes.anthropic_fake import MODEL, events, make_app, sse
from tests.support.fakes.vendor_common import (
    Behavior,
    Reply,
    ToolCall,
    assemble,
    serve,
    tool_call_opening,
)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def behavior() -> Behavior:
    return Behavior()


@pytest.fixture
async def provider(behavior: Behavior) -> AsyncIterator[AnthropicProvider]:
    p = AnthropicProvider(
        "anthropic-test",
        {
            "api_key": "sk-ant-test",
            "base_url": "http://fake",
            "transport": httpx.ASGITransport(app=make_app(behavior)),
            "default_max_tokens": 1024,
        },
    )
    yield p
    await p.aclose()


def req(messages: list[dict[str, Any]] | None = None, **params: Any) -> ChatRequest:
    return ChatRequest(
        model="claude-sonnet-4-5",
        messages=messages or [{"role": "user", "content": "Hi"}],
        params=params,
    )


async def collect(provider: AnthropicProvider, request: ChatRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.stream_chat(request)]


async def test_request_translation(provider: AnthropicProvider, behavior: Behavior) -> None:
    await provider.chat(
        req(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
            ],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stop="END",
            temperature=0.2,
            top_p=0.9,
            max_tokens=50,
            response_format={"type": "json_object"},
        )
    )
    sent = behavior.last
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == "sk-ant-test"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    body = sent["json"]
    assert body["system"].startswith("Be brief.\n\n")
    assert "JSON" in body["system"]  # JSON mode is emulated by an instruction
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}
    ]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": TOOLS[0]["function"]["parameters"],
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body["stop_sequences"] == ["END"]
    assert body["max_tokens"] == 50
    assert body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert "stream" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), (None, {"type": "auto"})],
)
async def test_tool_choice_modes(
    provider: AnthropicProvider, behavior: Behavior, choice: str | None, expected: dict[str, Any]
) -> None:
    await provider.chat(req(tools=TOOLS, tool_choice=choice))
    assert behavior.last["json"]["tool_choice"] == expected


async def test_tool_choice_none_keeps_tools_and_default_max_tokens(
    provider: AnthropicProvider, behavior: Behavior
) -> None:
    # the tools stay (a history with tool_use blocks needs them); the model may not call one
    await provider.chat(req(tools=TOOLS, tool_choice="none"))
    body = behavior.last["json"]
    assert [t["name"] for t in body["tools"]] == [t["function"]["name"] for t in TOOLS]
    assert body["tool_choice"] == {"type": "none"}
    assert body["max_tokens"] == 1024
    assert "system" not in body


async def test_plain_chat(provider: AnthropicProvider) -> None:
    out = await provider.chat(req())
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello there, how can I help?",
    }
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


async def test_tool_call_round_trip(provider: AnthropicProvider, behavior: Behavior) -> None:
    behavior.reply = Reply(text="", tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    out = await provider.chat(req([{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}

    behavior.reply = Reply(text="It is sunny in Paris.")
    out = await provider.chat(
        req(
            [
                {"role": "user", "content": "Weather in Paris?"},
                choice["message"],
                {"role": "tool", "tool_call_id": call["id"], "content": '{"sky": "sunny"}'},
            ],
            tools=TOOLS,
        )
    )
    assert out["choices"][0]["message"]["content"] == "It is sunny in Paris."
    assert behavior.last["json"]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": call["id"],
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call["id"], "content": '{"sky": "sunny"}'}
            ],
        },
    ]


async def test_stream_text_and_usage(provider: AnthropicProvider, behavior: Behavior) -> None:
    chunks = await collect(provider, req())
    assert behavior.last["json"]["stream"] is True
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # OpenAI's opening of a text answer: the role with empty content, then the text
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "Hello ther"}
    text, calls, finish = assemble(chunks)
    assert text == "Hello there, how can I help?"
    assert calls == [] and finish == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


async def test_stream_opening_with_a_tool_call(
    provider: AnthropicProvider, behavior: Behavior
) -> None:
    """The role comes in the tool call's first chunk, content null, as OpenAI streams a call."""
    behavior.reply = Reply(text="", tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    chunks = await collect(provider, req(tools=TOOLS))
    assert chunks[0]["id"] == "msg_01fake"
    assert chunks[0]["choices"] == [
        tool_call_opening(
            {
                "index": 0,
                "id": "toolu_0000",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        )
    ]
    rest = [c["choices"][0]["delta"] for c in chunks[1:] if c["choices"]]
    assert not any("role" in d or "content" in d for d in rest)
    assert assemble(chunks)[1:] == (
        [{"id": "toolu_0000", "name": "get_weather", "arguments": '{"city": "Paris"}'}],
        "tool_calls",
    )


@pytest.mark.parametrize("split", [(1, 1), (1, 7)])
async def test_stream_tool_call_deltas_any_byte_split(
    provider: AnthropicProvider, behavior: Behavior, split: tuple[int, int]
) -> None:
    behavior.split = split
    behavior.reply = Reply(
        text="Let me check. ",
        tool_calls=[
            ToolCall("get_weather", {"city": "Paris"}),
            ToolCall("get_weather", {"city": "Zürich"}),
        ],
    )
    chunks = await collect(provider, req(tools=TOOLS))
    text, calls, finish = assemble(chunks)
    assert text == "Let me check. "
    assert finish == "tool_calls"
    assert [c["name"] for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Zürich"}]
    assert calls[0]["id"] != calls[1]["id"]
    assert chunks[-1]["usage"]["completion_tokens"] == 7


@pytest.mark.parametrize(
    ("status", "retry_after", "code", "retryable", "out_status"),
    [
        (400, None, "upstream_bad_request", False, 400),
        (401, None, "upstream_auth_failed", False, 502),
        (403, None, "upstream_auth_failed", False, 502),
        (429, "7", "upstream_rate_limited", True, 429),
        (429, None, "upstream_rate_limited", True, 429),
        (500, None, "upstream_unavailable", True, 502),
        (529, "3", "upstream_overloaded", True, 503),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_http_errors(
    provider: AnthropicProvider,
    behavior: Behavior,
    status: int,
    retry_after: str | None,
    code: str,
    retryable: bool,
    out_status: int,
    stream: bool,
) -> None:
    behavior.status, behavior.retry_after = status, retry_after
    behavior.error_message = "vendor says no"
    with pytest.raises(ProviderError) as info:
        if stream:
            await collect(provider, req())
        else:
            await provider.chat(req())
    err = info.value
    assert (err.code, err.retryable, err.status) == (code, retryable, out_status)
    assert err.retry_after == (float(retry_after) if retry_after else None)
    assert "vendor says no" in err.message
    assert err.provider == "anthropic-test"


async def test_malformed_stream_chunk(provider: AnthropicProvider, behavior: Behavior) -> None:
    behavior.malformed = True
    with pytest.raises(ProviderError) as info:
        await collect(provider, req())
    assert info.value.code == "upstream_bad_response"


async def test_malformed_body(provider: AnthropicProvider, behavior: Behavior) -> None:
    behavior.malformed = True
    with pytest.raises(ProviderError) as info:
        await provider.chat(req())
    assert info.value.code == "upstream_bad_response"


def tcp_provider(base_url: str, **config: Any) -> AnthropicProvider:
    return AnthropicProvider("anthropic-test", {"api_key": "k", "base_url": base_url, **config})


@pytest.mark.parametrize("cut", [0.3, 0.7])
async def test_stream_breaking_midway(behavior: Behavior, cut: float) -> None:
    behavior.reply = Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    behavior.break_after = int(len(sse(events(behavior, MODEL), behavior)) * cut)
    received: list[dict[str, Any]] = []
    with serve(make_app(behavior)) as url:
        p = tcp_provider(url)
        with pytest.raises(ProviderError) as info:
            async for chunk in p.stream_chat(req(tools=TOOLS)):
                received.append(chunk)
        await p.aclose()
    assert info.value.code == "upstream_stream_broken"
    assert info.value.retryable
    assert not any(c.get("usage") for c in received)


async def test_timeout(behavior: Behavior) -> None:
    behavior.delay = 3
    with serve(make_app(behavior)) as url:
        p = tcp_provider(url, timeout=0.2)
        with pytest.raises(ProviderError) as info:
            await p.chat(req())
        await p.aclose()
    assert (info.value.status, info.value.code, info.value.retryable) == (
        504,
        "upstream_timeout",
        True,
    )


async def test_connection_refused(unused_url: str) -> None:
    p = tcp_provider(unused_url)
    with pytest.raises(ProviderError) as info:
        await p.chat(req())
    await p.aclose()
    assert (info.value.status, info.value.retryable) == (502, True)


@pytest.fixture
def unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


async def test_error_event_mid_stream(provider: AnthropicProvider) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        }
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        body = (
            f"event: message_start\ndata: {json.dumps(start)}\n\n"
            f"event: error\ndata: {json.dumps(error)}\n\n"
        )
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    p = tcp_provider("http://fake", transport=httpx.MockTransport(handler))
    with pytest.raises(ProviderError) as info:
        await collect(p, req())
    await p.aclose()
    assert (info.value.code, info.value.retryable, info.value.status) == (
        "upstream_overloaded",
        True,
        503,
    )


async def test_list_models_paginates(provider: AnthropicProvider) -> None:
    models = await provider.list_models()
    assert [m.id for m in models] == ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]
    assert models[0].context_window == 200000


async def test_parallel_tool_results_merge_into_one_user_turn(
    provider: AnthropicProvider, behavior: Behavior
) -> None:
    calls = [
        {
            "id": f"toolu_{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": args},
        }
        for i, args in enumerate(['{"city": "Paris"}', '{"city": "Rome"}'])
    ]
    await provider.chat(
        req(
            [
                {"role": "user", "content": "Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": calls},
                {"role": "tool", "tool_call_id": "toolu_0", "content": "sunny"},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "rainy"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "And this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    ],
                },
            ],
            tools=TOOLS,
            parallel_tool_calls=False,
        )
    )
    body = behavior.last["json"]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][0] == {"type": "text", "text": "Checking."}
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_0", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rainy"},
        {"type": "text", "text": "And this?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
        },
    ]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_json_schema_mode_is_an_instruction(
    provider: AnthropicProvider, behavior: Behavior
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    await provider.chat(
        req(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    )
    assert json.dumps(schema) in behavior.last["json"]["system"]


async def test_provider_entry_points_resolve() -> None:
    from importlib.metadata import entry_points

    from services.llm.providers.gemini import GeminiProvider
    from services.llm.providers.ollama import OllamaProvider

    found = {e.name: e for e in entry_points(group="aistack.llm_providers")}
    assert found["anthropic"].load() is AnthropicProvider
    assert found["gemini"].load() is GeminiProvider
    assert found["ollama"].load() is OllamaProvider


async def test_stream_stalling_midway_times_out(behavior: Behavior) -> None:
    behavior.stall_after = 120
    with serve(make_app(behavior)) as url:
        p = tcp_provider(url, timeout=0.3)
        with pytest.raises(ProviderError) as info:
            await collect(p, req())
        await p.aclose()
    assert (info.value.status, info.value.code, info.value.retryable) == (
        504,
        "upstream_timeout",
        True,
    )


async def test_connections_are_kept_alive_across_streams(behavior: Behavior) -> None:
    with serve(make_app(behavior)) as url:
        p = AnthropicProvider("a", {"api_key": "k", "base_url": url})
        for _ in range(3):
            await collect(p, req())
        await p.chat(req())
        await p.chat(req())
        await p.aclose()
    # streams reuse one connection, answers read whole one (the same one, or two: http_pool split)
    streams = {r["client"] for r in behavior.requests if r["json"].get("stream")}
    whole = {r["client"] for r in behavior.requests if not r["json"].get("stream")}
    assert len(streams) == len(whole) == 1
