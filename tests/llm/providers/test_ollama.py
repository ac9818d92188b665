"""Ollama adapter against a fake Ollama server speaking the real wire format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.embedded import free_port
from services.llm.providers.base import ChatRequest, EmbeddingRequest, ProviderError
from services.llm.providers.ollama import OllamaProvider
from tests.support.fakes.ollama_fake import MODEL, lines, make_app, ndjson
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
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Time", "parameters": {"type": "object"}},
    },
]


@pytest.fixture
def behavior() -> Behavior:
    return Behavior()


@pytest.fixture
async def provider(behavior: Behavior) -> AsyncIterator[OllamaProvider]:
    p = OllamaProvider(
        "ollama-test",
        {"base_url": "http://fake", "transport": httpx.ASGITransport(app=make_app(behavior))},
    )
    yield p
    await p.aclose()


def req(messages: list[dict[str, Any]] | None = None, **params: Any) -> ChatRequest:
    return ChatRequest(
        model=MODEL, messages=messages or [{"role": "user", "content": "Hi"}], params=params
    )


async def collect(provider: OllamaProvider, request: ChatRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.stream_chat(request)]


async def test_request_translation(provider: OllamaProvider, behavior: Behavior) -> None:
    await provider.chat(
        req(
            [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    ],
                },
            ],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stop="END",
            temperature=0.2,
            top_p=0.9,
            seed=7,
            max_tokens=50,
            response_format={"type": "json_object"},
        )
    )
    assert behavior.last["path"] == "/api/chat"
    assert behavior.last["json"] == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?", "images": ["iVBO"]},
        ],
        "stream": False,
        "options": {
            "temperature": 0.2,
            "top_p": 0.9,
            "seed": 7,
            "num_predict": 50,
            "stop": ["END"],
        },
        "format": "json",
        # Ollama has no tool_choice: a named function is enforced by sending only that tool
        "tools": [{"type": "function", "function": {**TOOLS[0]["function"]}}],
    }


async def test_json_schema_format_and_tool_choice_none(
    provider: OllamaProvider, behavior: Behavior
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await provider.chat(
        req(
            tools=TOOLS,
            tool_choice="none",
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    )
    body = behavior.last["json"]
    assert body["format"] == schema
    assert "tools" not in body


async def test_plain_chat(provider: OllamaProvider) -> None:
    out = await provider.chat(req())
    assert out["object"] == "chat.completion"
    assert out["model"] == MODEL
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello there, how can I help?",
    }
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


async def test_tool_call_round_trip(provider: OllamaProvider, behavior: Behavior) -> None:
    behavior.reply = Reply(text="", tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    out = await provider.chat(req(tools=TOOLS))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    # Ollama sends arguments as an object; OpenAI clients expect a JSON string
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}

    behavior.reply = Reply(text="Sunny.")
    await provider.chat(
        req(
            [
                {"role": "user", "content": "Hi"},
                choice["message"],
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
            ],
            tools=TOOLS,
        )
    )
    assert behavior.last["json"]["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]


async def test_stream_text_and_usage(provider: OllamaProvider, behavior: Behavior) -> None:
    out = await collect(provider, req())
    assert behavior.last["json"]["stream"] is True
    # OpenAI's opening of a text answer: the role with empty content, then the text
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert out[1]["choices"][0]["delta"] == {"content": "Hello"}
    assert assemble(out) == ("Hello there, how can I help?", [], "stop")
    assert out[-1]["choices"] == []
    assert out[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


async def test_stream_opening_with_a_tool_call(
    provider: OllamaProvider, behavior: Behavior
) -> None:
    """The role comes in the tool call's first chunk, content null, as OpenAI streams a call."""
    behavior.reply = Reply(text="", tool_calls=[ToolCall("get_weather", {"city": "Zürich"})])
    out = await collect(provider, req(tools=TOOLS))
    [choice] = out[0]["choices"]
    [call] = choice["delta"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert choice == tool_call_opening(
        {
            "index": 0,
            "id": call["id"],
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
        }
    )
    assert [c["choices"][0]["delta"] for c in out[1:] if c["choices"]] == [{}]  # the finish


@pytest.mark.parametrize("split", [(1, 1), (1, 7)])
async def test_stream_tool_calls_any_byte_split(
    provider: OllamaProvider, behavior: Behavior, split: tuple[int, int]
) -> None:
    behavior.split = split
    behavior.reply = Reply(
        text="Ça va… ",
        tool_calls=[ToolCall("get_weather", {"city": "Zürich"}), ToolCall("get_time", {})],
    )
    out = await collect(provider, req(tools=TOOLS))
    text, calls, finish = assemble(out)
    assert text == "Ça va… "
    assert finish == "tool_calls"
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["arguments"]) for c in calls] == [{"city": "Zürich"}, {}]
    assert out[-1]["usage"]["total_tokens"] == 19


async def test_length_finish(provider: OllamaProvider, behavior: Behavior) -> None:
    behavior.reply = Reply(stop="length")
    assert (await provider.chat(req()))["choices"][0]["finish_reason"] == "length"
    assert assemble(await collect(provider, req()))[2] == "length"


@pytest.mark.parametrize(
    ("status", "retry_after", "code", "retryable", "out_status"),
    [
        (400, None, "upstream_bad_request", False, 400),
        (401, None, "upstream_auth_failed", False, 502),
        (404, None, "upstream_not_found", False, 404),
        (429, "7", "upstream_rate_limited", True, 429),
        (429, None, "upstream_rate_limited", True, 429),
        (500, None, "upstream_unavailable", True, 502),
        (503, "2", "upstream_unavailable", True, 502),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_http_errors(
    provider: OllamaProvider,
    behavior: Behavior,
    status: int,
    retry_after: str | None,
    code: str,
    retryable: bool,
    out_status: int,
    stream: bool,
) -> None:
    behavior.status, behavior.retry_after = status, retry_after
    behavior.error_message = 'model "llama9" not found, try pulling it first'
    with pytest.raises(ProviderError) as info:
        if stream:
            await collect(provider, req())
        else:
            await provider.chat(req())
    err = info.value
    assert (err.code, err.retryable, err.status) == (code, retryable, out_status)
    assert err.retry_after == (float(retry_after) if retry_after else None)
    assert "try pulling it first" in err.message


async def test_error_line_mid_stream() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = (
            json.dumps(
                {
                    "model": MODEL,
                    "created_at": "x",
                    "message": {"role": "assistant", "content": "Hi"},
                    "done": False,
                }
            )
            + "\n"
            + json.dumps({"error": "an error was encountered while running the model"})
            + "\n"
        )
        return httpx.Response(200, text=body)

    p = OllamaProvider("o", {"base_url": "http://f", "transport": httpx.MockTransport(handler)})
    with pytest.raises(ProviderError) as info:
        await collect(p, req())
    await p.aclose()
    assert "while running the model" in info.value.message


async def test_malformed_stream_line(provider: OllamaProvider, behavior: Behavior) -> None:
    behavior.malformed = True
    with pytest.raises(ProviderError) as info:
        await collect(provider, req())
    assert info.value.code == "upstream_bad_response"


async def test_malformed_body(provider: OllamaProvider, behavior: Behavior) -> None:
    behavior.malformed = True
    with pytest.raises(ProviderError) as info:
        await provider.chat(req())
    assert info.value.code == "upstream_bad_response"


@pytest.mark.parametrize("clean_eof", [True, False])
async def test_stream_breaking_midway(behavior: Behavior, clean_eof: bool) -> None:
    payload = ndjson(lines(behavior, MODEL), behavior)
    behavior.break_after, behavior.clean_eof = len(payload) // 2, clean_eof
    with serve(make_app(behavior)) as url:
        p = OllamaProvider("o", {"base_url": url})
        with pytest.raises(ProviderError) as info:
            await collect(p, req())
        await p.aclose()
    assert (info.value.code, info.value.retryable) == ("upstream_stream_broken", True)


async def test_timeout(behavior: Behavior) -> None:
    behavior.delay = 3
    with serve(make_app(behavior)) as url:
        p = OllamaProvider("o", {"base_url": url, "timeout": 0.2})
        with pytest.raises(ProviderError) as info:
            await p.chat(req())
        await p.aclose()
    assert (info.value.status, info.value.code, info.value.retryable) == (
        504,
        "upstream_timeout",
        True,
    )


async def test_connection_refused() -> None:
    p = OllamaProvider("o", {"base_url": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(ProviderError) as info:
        await p.chat(req())
    await p.aclose()
    assert (info.value.status, info.value.retryable) == (502, True)


async def test_embeddings(provider: OllamaProvider, behavior: Behavior) -> None:
    out = await provider.embed(EmbeddingRequest(model="nomic-embed-text", input=["a", "b"]))
    assert behavior.last["path"] == "/api/embed"
    assert behavior.last["json"] == {"model": "nomic-embed-text", "input": ["a", "b"]}
    assert [d["embedding"] for d in out["data"]] == [[0.1, 0.2], [0.3, 0.4]]
    assert out["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


async def test_list_models(provider: OllamaProvider, behavior: Behavior) -> None:
    [model] = await provider.list_models()
    assert behavior.last["path"] == "/api/tags"
    assert (model.id, model.owned_by) == (MODEL, "ollama")


async def test_stream_stalling_midway_times_out(behavior: Behavior) -> None:
    behavior.stall_after = 120
    with serve(make_app(behavior)) as url:
        p = OllamaProvider("o", {"base_url": url, "timeout": 0.3})
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
        p = OllamaProvider("o", {"base_url": url})
        for _ in range(3):
            await collect(p, req())
        await p.chat(req())
        await p.chat(req())
        await p.aclose()
    # streams reuse one connection, answers read whole one (the same one, or two: http_pool split)
    streams = {r["client"] for r in behavior.requests if r["json"].get("stream")}
    whole = {r["client"] for r in behavior.requests if not r["json"].get("stream")}
    assert len(streams) == len(whole) == 1
