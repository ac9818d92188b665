"""Gemini adapter against a fake Gemini API speaking the real wire format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.embedded import free_port
from services.llm.providers.base import ChatRequest, EmbeddingRequest, ProviderError
from services.llm.providers.gemini import GeminiProvider
from tests.support.fakes.gemini_fake import SIGNATURE, chunks, make_app, sse
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
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "additionalProperties": False,
            },
        },
    }
]


@pytest.fixture
def behavior() -> Behavior:
    return Behavior()


@pytest.fixture
async def provider(behavior: Behavior) -> AsyncIterator[GeminiProvider]:
    p = GeminiProvider(
        "gemini-test",
        {
            "api_key": "AIza-test",
            "base_url": "http://fake",
            "transport": httpx.ASGITransport(app=make_app(behavior)),
        },
    )
    yield p
    await p.aclose()


def req(messages: list[dict[str, Any]] | None = None, **params: Any) -> ChatRequest:
    return ChatRequest(
        model="gemini-2.5-flash",
        messages=messages or [{"role": "user", "content": "Hi"}],
        params=params,
    )


async def collect(provider: GeminiProvider, request: ChatRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.stream_chat(request)]


async def test_request_translation(provider: GeminiProvider, behavior: Behavior) -> None:
    await provider.chat(
        req(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
            ],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stop=["END", "FIN"],
            temperature=0.2,
            top_p=0.9,
            max_tokens=50,
            response_format={"type": "json_object"},
        )
    )
    sent = behavior.last
    assert sent["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent["headers"]["x-goog-api-key"] == "AIza-test"
    assert sent["json"] == {
        "contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "temperature": 0.2,
            "topP": 0.9,
            "maxOutputTokens": 50,
            "stopSequences": ["END", "FIN"],
            "responseMimeType": "application/json",
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Weather for a city",
                        "parametersJsonSchema": TOOLS[0]["function"]["parameters"],
                    }
                ]
            }
        ],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
        },
    }


@pytest.mark.parametrize(
    ("choice", "mode"), [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY"), (None, "AUTO")]
)
async def test_tool_choice_modes(
    provider: GeminiProvider, behavior: Behavior, choice: str | None, mode: str
) -> None:
    await provider.chat(req(tools=TOOLS, tool_choice=choice))
    assert behavior.last["json"]["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


async def test_plain_chat(provider: GeminiProvider) -> None:
    out = await provider.chat(req())
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello there, how can I help?",
    }
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


async def test_tool_call_round_trip(provider: GeminiProvider, behavior: Behavior) -> None:
    behavior.reply = Reply(text="", tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    out = await provider.chat(req([{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS))
    choice = out["choices"][0]
    # Gemini says STOP; a stop with function calls is OpenAI's tool_calls
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_")  # synthesized: Gemini has no ids
    assert call["extra_content"] == {"google": {"thought_signature": SIGNATURE}}
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}

    behavior.reply = Reply(text="Sunny.")
    await provider.chat(
        req(
            [
                {"role": "user", "content": "Weather in Paris?"},
                choice["message"],
                {"role": "tool", "tool_call_id": call["id"], "content": '{"sky": "sunny"}'},
                {"role": "tool", "tool_call_id": call["id"], "content": "plain text"},
            ],
            tools=TOOLS,
        )
    )
    assert behavior.last["json"]["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    # the thinking signature survives the OpenAI round trip
                    "thoughtSignature": SIGNATURE,
                }
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "plain text"}}},
            ],
        },
    ]


async def test_tool_result_without_tool_call_is_rejected(provider: GeminiProvider) -> None:
    with pytest.raises(ProviderError) as info:
        await provider.chat(req([{"role": "tool", "tool_call_id": "nope", "content": "x"}]))
    assert (info.value.status, info.value.retryable) == (400, False)


async def test_stream_text_and_usage(provider: GeminiProvider, behavior: Behavior) -> None:
    out = await collect(provider, req())
    assert behavior.last["path"] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert behavior.last["query"] == {"alt": "sse"}
    # OpenAI's opening of a text answer: the role with empty content, then the text
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert out[1]["choices"][0]["delta"] == {"content": "Hello there, h"}
    text, calls, finish = assemble(out)
    assert (text, calls, finish) == ("Hello there, how can I help?", [], "stop")
    assert out[-1]["choices"] == []
    assert out[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


async def test_stream_opening_with_a_tool_call(
    provider: GeminiProvider, behavior: Behavior
) -> None:
    """The role comes in the tool call's first chunk, content null, as OpenAI streams a call."""
    behavior.reply = Reply(text="", tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    out = await collect(provider, req(tools=TOOLS))
    [choice] = out[0]["choices"]
    [call] = choice["delta"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert choice == tool_call_opening(
        {
            "index": 0,
            "id": call["id"],
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            "extra_content": {"google": {"thought_signature": SIGNATURE}},
        }
    )
    assert [c["choices"][0]["delta"] for c in out[1:] if c["choices"]] == [{}]  # the finish


async def test_stream_opening_of_each_candidate() -> None:
    """Candidates open on their own: one with text after a role chunk, one with its call."""
    call_part = {"functionCall": {"name": "get_weather", "args": {}, "id": "fc-1"}}
    frames: list[dict[str, Any]] = [
        {
            "candidates": [
                {"content": {"role": "model", "parts": [call_part]}, "index": 1},
                {"content": {"role": "model", "parts": [{"text": "Hi"}]}, "index": 0},
            ],
            "responseId": "resp-2",
        }
    ]
    frames.append(
        {
            "candidates": [
                {"content": {"parts": []}, "finishReason": "STOP", "index": 0},
                {"content": {"parts": []}, "finishReason": "STOP", "index": 1},
            ],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4},
        }
    )
    body = "".join(f"data: {json.dumps(f)}\r\n\r\n" for f in frames)
    transport = httpx.MockTransport(
        lambda _: httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
    )
    p = GeminiProvider("g", {"api_key": "k", "base_url": "http://fake", "transport": transport})
    out = await collect(p, req(tools=TOOLS))
    await p.aclose()
    call = {
        "index": 0,
        "id": "fc-1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in out[:3]] == [
        (1, {"role": "assistant", "content": None, "tool_calls": [call]}),
        (0, {"role": "assistant", "content": ""}),
        (0, {"content": "Hi"}),
    ]
    assert [c["choices"][0]["finish_reason"] for c in out[3:5]] == ["stop", "tool_calls"]
    assert out[-1]["choices"] == []


@pytest.mark.parametrize("split", [(1, 1), (1, 7)])
async def test_stream_tool_calls_any_byte_split(
    provider: GeminiProvider, behavior: Behavior, split: tuple[int, int]
) -> None:
    behavior.split = split
    behavior.reply = Reply(
        text="Checking… ",
        tool_calls=[
            ToolCall("get_weather", {"city": "Paris"}),
            ToolCall("get_weather", {"city": "Zürich"}),
        ],
    )
    out = await collect(provider, req(tools=TOOLS))
    text, calls, finish = assemble(out)
    assert text == "Checking… "
    assert finish == "tool_calls"
    assert [json.loads(c["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Zürich"}]
    assert len({c["id"] for c in calls}) == 2
    starts = [
        call
        for chunk in out
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or []
    ]
    assert all(c["extra_content"]["google"]["thought_signature"] == SIGNATURE for c in starts)
    assert out[-1]["usage"]["total_tokens"] == 19


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter")],
)
async def test_finish_reasons(
    provider: GeminiProvider, behavior: Behavior, reason: str, finish: str
) -> None:
    behavior.reply = Reply(stop=reason)
    out = await provider.chat(req())
    assert out["choices"][0]["finish_reason"] == finish
    assert assemble(await collect(provider, req()))[2] == finish


@pytest.mark.parametrize(
    ("status", "retry_after", "code", "retryable", "out_status"),
    [
        (400, None, "upstream_bad_request", False, 400),
        (401, None, "upstream_auth_failed", False, 502),
        (403, None, "upstream_auth_failed", False, 502),
        (429, "7", "upstream_rate_limited", True, 429),
        (429, None, "upstream_rate_limited", True, 429),
        (500, None, "upstream_unavailable", True, 502),
        (503, "2", "upstream_unavailable", True, 502),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_http_errors(
    provider: GeminiProvider,
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


async def test_retry_delay_from_error_details() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {
            "error": {
                "code": 429,
                "message": "Resource has been exhausted",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "21s"}
                ],
            }
        }
        return httpx.Response(429, json=body)

    p = GeminiProvider("g", {"base_url": "http://f", "transport": httpx.MockTransport(handler)})
    with pytest.raises(ProviderError) as info:
        await p.chat(req())
    await p.aclose()
    assert info.value.retry_after == 21.0


async def test_malformed_stream_chunk(provider: GeminiProvider, behavior: Behavior) -> None:
    behavior.malformed = True
    with pytest.raises(ProviderError) as info:
        await collect(provider, req())
    assert info.value.code == "upstream_bad_response"


async def test_malformed_body(provider: GeminiProvider, behavior: Behavior) -> None:
    behavior.malformed = True
    with pytest.raises(ProviderError) as info:
        await provider.chat(req())
    assert info.value.code == "upstream_bad_response"


async def test_stream_cut_between_frames(provider: GeminiProvider, behavior: Behavior) -> None:
    # a clean EOF after the first frame: no finishReason ever arrives
    first = sse(chunks(behavior)[:1], Behavior())
    behavior.break_after, behavior.clean_eof = len(first), True
    with pytest.raises(ProviderError) as info:
        await collect(provider, req())
    assert info.value.code == "upstream_stream_broken"


async def test_stream_breaking_midway(behavior: Behavior) -> None:
    behavior.break_after = len(sse(chunks(behavior), behavior)) // 2
    with serve(make_app(behavior)) as url:
        p = GeminiProvider("g", {"base_url": url})
        with pytest.raises(ProviderError) as info:
            await collect(p, req())
        await p.aclose()
    assert (info.value.code, info.value.retryable) == ("upstream_stream_broken", True)


async def test_timeout(behavior: Behavior) -> None:
    behavior.delay = 3
    with serve(make_app(behavior)) as url:
        p = GeminiProvider("g", {"base_url": url, "timeout": 0.2})
        with pytest.raises(ProviderError) as info:
            await collect(p, req())
        await p.aclose()
    assert (info.value.status, info.value.code, info.value.retryable) == (
        504,
        "upstream_timeout",
        True,
    )


async def test_connection_refused() -> None:
    p = GeminiProvider("g", {"base_url": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(ProviderError) as info:
        await p.chat(req())
    await p.aclose()
    assert (info.value.status, info.value.retryable) == (502, True)


async def test_embeddings(provider: GeminiProvider, behavior: Behavior) -> None:
    out = await provider.embed(
        EmbeddingRequest(model="text-embedding-004", input=["a", "b"], params={"dimensions": 2})
    )
    assert behavior.last["path"] == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert behavior.last["json"] == {
        "requests": [
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": t}]},
                "outputDimensionality": 2,
            }
            for t in ("a", "b")
        ]
    }
    assert out["object"] == "list"
    assert [d["embedding"] for d in out["data"]] == [[0.1, 0.2], [0.3, 0.4]]
    assert [d["index"] for d in out["data"]] == [0, 1]


async def test_list_models(provider: GeminiProvider) -> None:
    [model] = await provider.list_models()
    assert (model.id, model.context_window) == ("gemini-2.5-flash", 1048576)


async def test_json_schema_mode(provider: GeminiProvider, behavior: Behavior) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    await provider.chat(
        req(
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
            seed=3,
        )
    )
    assert behavior.last["json"]["generationConfig"] == {
        "seed": 3,
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
