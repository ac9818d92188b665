"""OpenAI adapter against a fake OpenAI API speaking the real wire format."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from starlette.middleware.gzip import GZipMiddleware

from libs.embedded import free_port
from services.llm.providers.base import ChatRequest, EmbeddingRequest, ProviderError
from services.llm.providers.openai import OpenAIProvider
from tests.support.fakes.openai_fake import API_KEY, MODEL, chunks, make_app, sse
from tests.support.fakes.vendor_common import Behavior, Reply, ToolCall, assemble, serve

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def config(base_url: str = "http://fake/v1", **extra: Any) -> dict[str, Any]:
    return {"base_url": base_url, "api_key": API_KEY, **extra}


@pytest.fixture
def behavior() -> Behavior:
    return Behavior()


@pytest.fixture
async def provider(behavior: Behavior) -> AsyncIterator[OpenAIProvider]:
    p = OpenAIProvider("openai-test", config(transport=httpx.ASGITransport(app=make_app(behavior))))
    yield p
    await p.aclose()


def req(messages: list[dict[str, Any]] | None = None, **params: Any) -> ChatRequest:
    return ChatRequest(
        model=MODEL, messages=messages or [{"role": "user", "content": "Hi"}], params=params
    )


async def collect(provider: OpenAIProvider, request: ChatRequest) -> list[dict[str, Any]]:
    out = [chunk async for chunk in provider.stream_chat(request)]
    for chunk in out:
        ChatCompletionChunk.model_validate(chunk)
    return out


async def test_body_is_passed_through(provider: OpenAIProvider, behavior: Behavior) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
        },
    ]
    params = {
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "stop": ["END"],
        "temperature": 0.2,
        "seed": 7,
        "max_completion_tokens": 50,
        "logprobs": True,
        "user": "u-1",
        "stream": True,  # the adapter decides streaming by the method called
    }
    await provider.chat(req(messages, **params))
    last = behavior.last
    assert last["path"] == "/v1/chat/completions"
    assert last["headers"]["authorization"] == f"Bearer {API_KEY}"
    expected = {**params, "model": MODEL, "messages": messages}
    del expected["stream"]
    assert last["json"] == expected


async def test_config_headers_and_defaults(behavior: Behavior) -> None:
    p = OpenAIProvider(
        "o",
        config(
            transport=httpx.ASGITransport(app=make_app(behavior)),
            organization="org-1",
            project="proj-1",
            headers={"x-extra": "yes"},
            defaults={"temperature": 0.5, "max_tokens": 10},
        ),
    )
    await p.chat(req(temperature=0.1))
    await p.aclose()
    headers, body = behavior.last["headers"], behavior.last["json"]
    assert (headers["openai-organization"], headers["openai-project"]) == ("org-1", "proj-1")
    assert headers["x-extra"] == "yes"
    assert (body["temperature"], body["max_tokens"]) == (0.1, 10)


async def test_api_key_from_env(behavior: Behavior, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    p = OpenAIProvider(
        "o", {"base_url": "http://f/v1", "transport": httpx.ASGITransport(app=make_app(behavior))}
    )
    await p.chat(req())
    await p.aclose()
    assert behavior.last["headers"]["authorization"] == f"Bearer {API_KEY}"


async def test_no_key_sends_no_authorization(behavior: Behavior) -> None:
    # local OpenAI-compatible servers (vLLM, LM Studio) need no key; the fake then says 401
    p = OpenAIProvider(
        "o",
        {
            "base_url": "http://f/v1",
            "api_key_env": "AISTACK_TEST_UNSET_KEY",
            "transport": httpx.ASGITransport(app=make_app(behavior)),
        },
    )
    with pytest.raises(ProviderError) as info:
        await p.chat(req())
    await p.aclose()
    assert "authorization" not in behavior.last["headers"]
    assert (info.value.code, info.value.retryable) == ("upstream_auth_failed", False)
    assert "Incorrect API key" in info.value.message


async def test_plain_chat(provider: OpenAIProvider) -> None:
    out = await provider.chat(req())
    ChatCompletion.model_validate(out)
    assert out["choices"][0]["message"]["content"] == "Hello there, how can I help?"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert {k: out["usage"][k] for k in USAGE} == USAGE


async def test_tool_calls(provider: OpenAIProvider, behavior: Behavior) -> None:
    behavior.reply = Reply(text="", tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    out = await provider.chat(req(tools=TOOLS))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


async def test_stream_text_and_usage(provider: OpenAIProvider, behavior: Behavior) -> None:
    out = await collect(provider, req(stream_options={"include_obfuscation": False}))
    body = behavior.last["json"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    assert assemble(out) == ("Hello there, how can I help?", [], "stop")
    assert out[-1]["choices"] == []
    assert {k: out[-1]["usage"][k] for k in USAGE} == USAGE


@pytest.mark.parametrize("split", [(1, 1), (1, 5), (7, 40)])
async def test_stream_tool_calls_any_byte_split(
    provider: OpenAIProvider, behavior: Behavior, split: tuple[int, int]
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


async def test_stream_without_upstream_usage_ends_with_an_estimate(behavior: Behavior) -> None:
    p = OpenAIProvider(
        "o",
        config(transport=httpx.ASGITransport(app=make_app(behavior)), stream_usage=False),
    )
    out = await collect(p, req())
    await p.aclose()
    assert "stream_options" not in behavior.last["json"]
    assert out[-1]["choices"] == []
    usage = out[-1]["usage"]
    assert usage["estimated"] is True
    assert usage["completion_tokens"] == 7  # 28 characters / 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7


async def test_length_finish(provider: OpenAIProvider, behavior: Behavior) -> None:
    behavior.reply = Reply(stop="length")
    assert (await provider.chat(req()))["choices"][0]["finish_reason"] == "length"
    assert assemble(await collect(provider, req()))[2] == "length"


@pytest.mark.parametrize(
    ("status", "retry_after", "code", "retryable", "out_status"),
    [
        (400, None, "upstream_bad_request", False, 400),
        (401, None, "upstream_auth_failed", False, 502),
        (403, None, "upstream_auth_failed", False, 502),
        (404, None, "upstream_not_found", False, 404),
        (408, None, "upstream_unavailable", True, 502),
        (409, "1", "upstream_unavailable", True, 502),
        (429, "7", "upstream_rate_limited", True, 429),
        (429, None, "upstream_rate_limited", True, 429),
        (500, None, "upstream_unavailable", True, 502),
        (503, "2", "upstream_unavailable", True, 502),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_http_errors(
    provider: OpenAIProvider,
    behavior: Behavior,
    status: int,
    retry_after: str | None,
    code: str,
    retryable: bool,
    out_status: int,
    stream: bool,
) -> None:
    behavior.status, behavior.retry_after = status, retry_after
    behavior.error_message = "This model's maximum context length is 128000 tokens."
    with pytest.raises(ProviderError) as info:
        if stream:
            await collect(provider, req())
        else:
            await provider.chat(req())
    err = info.value
    assert (err.code, err.retryable, err.status) == (code, retryable, out_status)
    assert err.retry_after == (float(retry_after) if retry_after else None)
    assert "maximum context length" in err.message
    assert err.provider == "openai-test"


@pytest.mark.parametrize(
    "body",
    [
        {"object": "error", "message": "vLLM says no", "type": "BadRequestError", "code": 400},
        {"detail": "LM Studio says no"},
        {"error": "plain string says no"},
    ],
)
async def test_compatible_servers_error_shapes(body: dict[str, Any]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=body)

    p = OpenAIProvider("o", config(transport=httpx.MockTransport(handler)))
    with pytest.raises(ProviderError) as info:
        await p.chat(req())
    await p.aclose()
    assert info.value.code == "upstream_bad_request"
    assert "says no" in info.value.message


async def test_error_chunk_mid_stream() -> None:
    first = chunks(Behavior(), MODEL, include_usage=True)[:2]
    payload = "".join(f"data: {json.dumps(c)}\n\n" for c in first) + (
        'data: {"error": {"message": "The server had an error while processing your request.",'
        ' "type": "server_error", "param": null, "code": null}}\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=payload, headers={"content-type": "text/event-stream"})

    p = OpenAIProvider("o", config(transport=httpx.MockTransport(handler)))
    seen: list[dict[str, Any]] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in p.stream_chat(req()):
            seen.append(chunk)
    await p.aclose()
    assert len(seen) == 2
    assert (info.value.code, info.value.retryable) == ("upstream_unavailable", True)
    assert "error while processing" in info.value.message


async def test_malformed_stream_chunk(provider: OpenAIProvider, behavior: Behavior) -> None:
    behavior.malformed = True
    with pytest.raises(ProviderError) as info:
        await collect(provider, req())
    assert (info.value.code, info.value.retryable) == ("upstream_bad_response", False)


async def test_chunk_without_choices_is_malformed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text='data: {"id": "x", "object": "chat.completion.chunk"}\n\n')

    p = OpenAIProvider("o", config(transport=httpx.MockTransport(handler)))
    with pytest.raises(ProviderError) as info:
        await collect(p, req())
    await p.aclose()
    assert info.value.code == "upstream_bad_response"


async def test_malformed_body(provider: OpenAIProvider, behavior: Behavior) -> None:
    behavior.malformed = True
    with pytest.raises(ProviderError) as info:
        await provider.chat(req())
    assert info.value.code == "upstream_bad_response"


# the tests below talk to a real socket, once per connection pool the adapters can use
@pytest.fixture(params=["aiohttp"])
def pool(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("clean_eof", [True, False])
async def test_stream_breaking_midway(behavior: Behavior, clean_eof: bool, pool: str) -> None:
    payload = sse(chunks(behavior, MODEL, include_usage=True), behavior)
    behavior.break_after, behavior.clean_eof = len(payload) // 2, clean_eof
    with serve(make_app(behavior)) as url:
        p = OpenAIProvider("o", config(f"{url}/v1", http_pool=pool))
        seen: list[dict[str, Any]] = []
        with pytest.raises(ProviderError) as info:
            async for chunk in p.stream_chat(req()):
                seen.append(chunk)
        await p.aclose()
    assert seen  # the first half arrived before the break
    assert (info.value.code, info.value.retryable) == ("upstream_stream_broken", True)


async def test_timeout(behavior: Behavior, pool: str) -> None:
    behavior.delay = 3
    with serve(make_app(behavior)) as url:
        p = OpenAIProvider("o", config(f"{url}/v1", timeout=0.2, http_pool=pool))
        with pytest.raises(ProviderError) as info:
            await p.chat(req())
        await p.aclose()
    assert (info.value.status, info.value.code, info.value.retryable) == (
        504,
        "upstream_timeout",
        True,
    )


async def test_stream_stalling_midway_times_out(behavior: Behavior, pool: str) -> None:
    payload = sse(chunks(behavior, MODEL, include_usage=True), behavior)
    # silent after three whole events
    behavior.stall_after = (
        payload.index(b"\n\n", payload.index(b"\n\n", payload.index(b"\n\n") + 2) + 2) + 2
    )
    with serve(make_app(behavior)) as url:
        p = OpenAIProvider("o", config(f"{url}/v1", timeout=0.3, http_pool=pool))
        seen: list[dict[str, Any]] = []
        with pytest.raises(ProviderError) as info:
            async for chunk in p.stream_chat(req()):
                seen.append(chunk)
        await p.aclose()
    assert (info.value.status, info.value.code) == (504, "upstream_timeout")
    # what was sent before the stall was handed on at once, not held for more
    assert seen


async def test_connection_refused(pool: str) -> None:
    p = OpenAIProvider("o", config(f"http://127.0.0.1:{free_port()}/v1", http_pool=pool))
    with pytest.raises(ProviderError) as info:
        await p.chat(req())
    await p.aclose()
    assert (info.value.status, info.value.retryable) == (502, True)


async def test_connections_are_kept_alive(behavior: Behavior, pool: str) -> None:
    with serve(make_app(behavior)) as url:
        p = OpenAIProvider("o", config(f"{url}/v1", http_pool=pool))
        for _ in range(3):
            await p.chat(req())
        await collect(p, req())
        await p.chat(req())
        await p.aclose()
    streams = {r["client"] for r in behavior.requests if r["json"].get("stream")}
    whole = {r["client"] for r in behavior.requests if not r["json"].get("stream")}
    assert len(streams) == len(whole) == 1
    if pool != "split":  # one pool: one connection for both
        assert streams == whole


@pytest.mark.parametrize("removed", ["pyreqwest", "split", "httpx"])
def test_a_removed_http_pool_is_refused(removed: str) -> None:
    with pytest.raises(ProviderError) as info:
        OpenAIProvider("o", config(http_pool=removed))
    assert info.value.code == "provider_misconfigured"
    assert f"http_pool {removed!r} was removed: aiohttp" in info.value.message


async def test_a_compressed_answer_is_decoded(behavior: Behavior, pool: str) -> None:
    # httpx's default headers accept gzip, and vendors behind a CDN use it
    with serve(GZipMiddleware(make_app(behavior), minimum_size=16)) as url:
        p = OpenAIProvider("o", config(f"{url}/v1", http_pool=pool))
        out = await p.chat(req())
        await p.aclose()
    ChatCompletion.model_validate(out)
    assert "gzip" in behavior.last["headers"]["accept-encoding"]


async def test_embeddings(provider: OpenAIProvider, behavior: Behavior) -> None:
    out = await provider.embed(
        EmbeddingRequest(model="text-embedding-3-small", input=["a", "b"], params={"user": "u"})
    )
    CreateEmbeddingResponse.model_validate(out)
    assert behavior.last["path"] == "/v1/embeddings"
    assert behavior.last["json"] == {
        "model": "text-embedding-3-small",
        "input": ["a", "b"],
        "user": "u",
    }
    assert [d["embedding"] for d in out["data"]] == [[0.1, 0.2], [0.3, 0.4]]
    assert out["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


async def test_embeddings_base64_passes_through(provider: OpenAIProvider) -> None:
    out = await provider.embed(
        EmbeddingRequest(
            model="text-embedding-3-small", input=["a"], params={"encoding_format": "base64"}
        )
    )
    raw = base64.b64decode(out["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == pytest.approx((0.1, 0.2))


async def test_embedding_errors(provider: OpenAIProvider, behavior: Behavior) -> None:
    behavior.status, behavior.retry_after = 429, "3"
    with pytest.raises(ProviderError) as info:
        await provider.embed(EmbeddingRequest(model="text-embedding-3-small", input=["a"]))
    assert (info.value.status, info.value.retry_after) == (429, 3.0)


async def test_list_models(provider: OpenAIProvider, behavior: Behavior) -> None:
    models = await provider.list_models()
    assert behavior.last["path"] == "/v1/models"
    assert [(m.id, m.owned_by) for m in models] == [
        ("gpt-4o-mini", "system"),
        ("text-embedding-3-small", "system"),
        ("ft:gpt-4o-mini:acme::abc", "acme"),
    ]


async def test_static_models_need_no_upstream() -> None:
    p = OpenAIProvider(
        "o",
        {
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "models": ["qwen2.5-7b", {"id": "llama-3.1-8b", "context_window": 131072}],
        },
    )
    models = await p.list_models()
    await p.aclose()
    assert [(m.id, m.owned_by, m.context_window) for m in models] == [
        ("qwen2.5-7b", "openai", None),
        ("llama-3.1-8b", "openai", 131072),
    ]
