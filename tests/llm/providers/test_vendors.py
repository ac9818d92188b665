"""Aliases routed to Azure OpenAI, Anthropic, Gemini and Ollama (fakes speaking each vendor's
wire format over real HTTP), called through the llm app with the real ``openai`` SDK: what a
client sees must be OpenAI's format whatever vendor answers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)
from redis.asyncio import Redis

from libs.testing import Infra, auth_headers
from services.llm.app import build_app
from tests.support.fakes import anthropic_fake, gemini_fake, ollama_fake, openai_fake
from tests.support.fakes.vendor_common import Behavior, serve
from tests.support.stacks.llm import KEY_ENV, Env, Upstream, open_env, settings_for
from tests.support.stacks.vendors import (
    ANTHROPIC_KEY,
    ANTHROPIC_KEY_ENV,
    APPS,
    AZURE_KEY_ENV,
    CALLS,
    CHAT_VENDORS,
    EMBED_VENDORS,
    GEMINI_KEY,
    GEMINI_KEY_ENV,
    MESSAGES,
    TEXT,
    TOOLS,
    VENDORS,
    Vendor,
    vendor_routing,
)

# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def vendor_servers() -> Iterator[dict[str, Upstream]]:
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, make_app in APPS.items():
            behavior = Behavior()
            servers[name] = Upstream(stack.enter_context(serve(make_app(behavior))), behavior)
        yield servers


@pytest.fixture
def upstreams(vendor_servers: dict[str, Upstream]) -> dict[str, Upstream]:
    for upstream in vendor_servers.values():
        upstream.reset()
    return vendor_servers


@pytest.fixture
async def venv(
    infra: Infra,
    redis: Redis,
    tmp_path: Path,
    upstreams: dict[str, Upstream],
    primary: Upstream,
    backup: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Env]:
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    monkeypatch.setenv(AZURE_KEY_ENV, openai_fake.AZURE_KEY)
    monkeypatch.setenv(ANTHROPIC_KEY_ENV, ANTHROPIC_KEY)
    monkeypatch.setenv(GEMINI_KEY_ENV, GEMINI_KEY)
    app = build_app(settings_for(tmp_path, vendor_routing(upstreams)))
    async with open_env(app, primary, backup, redis) as env:
        yield env


@dataclass
class Case:
    """A vendor under test: its routing entry and its fake."""

    vendor: Vendor
    upstream: Upstream

    @property
    def behavior(self) -> Behavior:
        return self.upstream.behavior

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.behavior.requests if self.vendor.chat_path in r["path"]]


@pytest.fixture(params=CHAT_VENDORS)
def case(request: pytest.FixtureRequest, upstreams: dict[str, Upstream]) -> Case:
    return Case(VENDORS[request.param], upstreams[request.param])


@pytest.fixture(params=EMBED_VENDORS)
def embed_case(request: pytest.FixtureRequest, upstreams: dict[str, Upstream]) -> Case:
    return Case(VENDORS[request.param], upstreams[request.param])


def assert_usage_event(
    ev: dict[str, Any], case: Case, prompt: int, completion: int, status: str = "ok"
) -> None:
    assert (ev["provider"], ev["model"]) == (case.vendor.provider, case.vendor.model)
    assert (ev["prompt_tokens"], ev["completion_tokens"]) == (prompt, completion)
    assert ev["kind"] == "chat" and ev["status"] == status and ev["cached"] is False
    expected = (Decimal(prompt) * 1 + Decimal(completion) * 4) / 1_000_000
    assert Decimal(ev["cost_usd"]) == expected.quantize(Decimal("0.00000001"))


def sent_text(case: Case) -> str:
    """The user text as it reached the vendor, in the vendor's own shape."""
    body = case.chat_requests()[-1]["json"]
    if case.vendor.provider == "anthropic":
        return str(body["messages"][0]["content"][0]["text"])
    if case.vendor.provider == "gemini":
        return str(body["contents"][0]["parts"][0]["text"])
    return str(body["messages"][0]["content"])


def stream_payload(case: Case) -> bytes:
    """The bytes the vendor's fake streams for its current behaviour."""
    b = case.behavior
    match case.vendor.provider:
        case "azure":
            return openai_fake.sse(
                openai_fake.chunks(b, openai_fake.MODEL, include_usage=True, azure=True), b
            )
        case "anthropic":
            return anthropic_fake.sse(anthropic_fake.events(b, case.vendor.model), b)
        case "gemini":
            return gemini_fake.sse(gemini_fake.chunks(b), b)
        case _:
            return ollama_fake.ndjson(ollama_fake.lines(b, case.vendor.model), b)


# ------------------------------------------------------------------------------ plain chat


async def test_plain_chat(venv: Env, case: Case) -> None:
    case.behavior.reply.prompt_tokens, case.behavior.reply.completion_tokens = 21, 9
    raw = await venv.client.chat.completions.with_raw_response.create(
        model=case.vendor.alias, messages=MESSAGES, max_tokens=50
    )
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == TEXT
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (21, 9)
    assert resp.usage.total_tokens == 30
    assert raw.headers["x-aistack-provider"] == case.vendor.provider
    assert raw.headers["x-aistack-model"] == case.vendor.model

    # one request, to the alias's vendor model, with the caller's message and limit
    assert len(case.chat_requests()) == 1
    assert sent_text(case) == "Say hello"
    sent = case.chat_requests()[-1]
    limit = {
        "azure": lambda b: b["max_tokens"],
        "anthropic": lambda b: b["max_tokens"],
        "gemini": lambda b: b["generationConfig"]["maxOutputTokens"],
        "ollama": lambda b: b["options"]["num_predict"],
    }[case.vendor.provider](sent["json"])
    assert limit == 50
    if case.vendor.provider in ("anthropic", "ollama"):
        assert sent["json"]["model"] == case.vendor.model
    auth = {
        "azure": ("api-key", openai_fake.AZURE_KEY),
        "anthropic": ("x-api-key", ANTHROPIC_KEY),
        "gemini": ("x-goog-api-key", GEMINI_KEY),
    }.get(case.vendor.provider)
    if auth:
        assert sent["headers"][auth[0]] == auth[1]

    events = await venv.usage_events()
    assert len(events) == 1
    assert events[0]["request_id"] == resp.id
    assert_usage_event(events[0], case, 21, 9)
    assert events[0]["ttft_ms"] is None


VENDOR_STOPS = {
    "length": {
        "azure": "length",
        "anthropic": "max_tokens",
        "gemini": "MAX_TOKENS",
        "ollama": "length",
    },
    "content_filter": {"azure": "content_filter", "anthropic": "refusal", "gemini": "SAFETY"},
}


@pytest.mark.parametrize(
    ("provider", "finish", "stop"),
    [(p, finish, stop) for finish, stops in VENDOR_STOPS.items() for p, stop in stops.items()],
)
async def test_vendor_stop_reasons(
    venv: Env, upstreams: dict[str, Upstream], provider: str, finish: str, stop: str
) -> None:
    alias = VENDORS[provider].alias
    upstreams[provider].behavior.reply.stop = stop
    resp = await venv.client.chat.completions.create(model=alias, messages=MESSAGES, max_tokens=7)
    assert resp.choices[0].finish_reason == finish
    stream = await venv.client.chat.completions.create(
        model=alias, messages=MESSAGES, max_tokens=7, stream=True
    )
    finishes = [c.choices[0].finish_reason async for c in stream if c.choices]
    assert [f for f in finishes if f] == [finish]


async def test_anthropic_gets_the_configured_max_tokens_when_the_caller_sets_none(
    venv: Env, upstreams: dict[str, Upstream]
) -> None:
    await venv.client.chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, *MESSAGES],
    )
    body = upstreams["anthropic"].behavior.last["json"]
    assert body["max_tokens"] == 321
    assert body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user"]


# ------------------------------------------------------------------------------ streaming


async def test_streaming_reframed_as_openai_chunks(venv: Env, case: Case) -> None:
    case.behavior.reply.prompt_tokens, case.behavior.reply.completion_tokens = 15, 8
    case.behavior.split = (1, 7)  # the vendor's frames arrive cut at awkward places
    stream = await venv.client.chat.completions.create(
        model=case.vendor.alias,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks: list[ChatCompletionChunk] = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == TEXT
    assert len([c for c in with_choices if c.choices[0].delta.content]) > 1, "streamed in pieces"
    finishes = [c.choices[0].finish_reason for c in with_choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert all(c.choices[0].delta.tool_calls is None for c in with_choices)
    # the final usage chunk: no choices, the vendor's token counts
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (15, 8)
    assert last.usage.total_tokens == 23
    assert all(c.usage is None for c in chunks[:-1])
    assert sent_text(case) == "Say hello"

    events = await venv.usage_events()
    assert len(events) == 1
    assert events[0]["request_id"] == last.id
    assert_usage_event(events[0], case, 15, 8)
    assert events[0]["ttft_ms"] is not None


async def test_streaming_wire_format_without_usage(venv: Env, case: Case) -> None:
    async with venv.http.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": case.vendor.alias, "messages": MESSAGES, "stream": True},
        headers=auth_headers(venv.principal),
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-aistack-provider"] == case.vendor.provider
        raw = (await resp.aread()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    for p in payloads:
        ChatCompletionChunk.model_validate(p)
    # no usage asked for: no usage field and no usage chunk
    assert all("usage" not in p and p["choices"] for p in payloads)
    # OpenAI's opening of a text answer: the role with empty content, then the text
    opening: dict[str, Any] = {"role": "assistant", "content": ""}
    if case.vendor.provider == "azure":
        opening["refusal"] = None  # passed through as Azure sends it
    assert payloads[0]["choices"][0]["delta"] == opening
    assert payloads[1]["choices"][0]["delta"]["content"]
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads) == TEXT
    # the usage is still billed
    events_ = await venv.usage_events()
    assert len(events_) == 1
    assert_usage_event(events_[0], case, 12, 7)


async def test_multibyte_text_split_anywhere_on_the_wire(venv: Env, case: Case) -> None:
    text = "Grüße aus Köln — 東京から 👋🏽, ça va?"
    case.behavior.reply.text = text
    case.behavior.split = (1, 3)  # UTF-8 sequences and frame ends cut between reads
    stream = await venv.client.chat.completions.create(
        model=case.vendor.alias, messages=MESSAGES, stream=True
    )
    got = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert got == text
    resp = await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert resp.choices[0].message.content == text


# ------------------------------------------------------------------------------ tool calls


def assert_tool_request(case: Case) -> None:
    """The OpenAI tools reached the vendor in its own shape."""
    body = case.chat_requests()[-1]["json"]
    provider = case.vendor.provider
    if provider == "azure":
        assert body["tools"] == TOOLS
    elif provider == "anthropic":
        assert [t["name"] for t in body["tools"]] == ["get_weather", "get_time"]
        assert body["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]
        assert body["tool_choice"] == {"type": "auto"}
    elif provider == "gemini":
        declarations = body["tools"][0]["functionDeclarations"]
        assert [d["name"] for d in declarations] == ["get_weather", "get_time"]
        assert declarations[0]["parametersJsonSchema"] == TOOLS[0]["function"]["parameters"]
    else:
        assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "get_time"]


async def test_tool_calls(venv: Env, case: Case) -> None:
    case.behavior.reply.tool_calls = CALLS
    case.behavior.reply.text = ""
    resp = await venv.client.chat.completions.create(
        model=case.vendor.alias, messages=MESSAGES, tools=TOOLS, tool_choice="auto"
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert not choice.message.content
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 2
    assert all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls)
    fn_calls = [c for c in calls if isinstance(c, ChatCompletionMessageFunctionToolCall)]
    assert [c.function.name for c in fn_calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in fn_calls] == [{"city": "Paris"}, {}]
    assert all(c.type == "function" and c.id for c in fn_calls)
    assert len({c.id for c in fn_calls}) == 2
    assert_tool_request(case)
    events = await venv.usage_events()
    assert len(events) == 1
    assert_usage_event(events[0], case, 12, 7)


async def test_streamed_tool_calls(venv: Env, case: Case) -> None:
    case.behavior.reply.tool_calls = CALLS
    case.behavior.reply.text = ""
    stream = await venv.client.chat.completions.create(
        model=case.vendor.alias,
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, Any]] = {}
    finishes: list[str] = []
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            assert not choice.delta.content
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                slot = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                if delta.id:
                    assert slot["id"] is None, "a tool call id is sent once"
                    slot["id"] = delta.id
                if delta.function:
                    slot["name"] += delta.function.name or ""
                    slot["arguments"] += delta.function.arguments or ""
    assert sorted(calls) == [0, 1]
    assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "get_time"]
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [{"city": "Paris"}, {}]
    assert all(calls[i]["id"] for i in (0, 1)) and calls[0]["id"] != calls[1]["id"]
    assert finishes == ["tool_calls"]
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 7)
    assert_tool_request(case)
    events = await venv.usage_events()
    assert len(events) == 1
    assert_usage_event(events[0], case, 12, 7)


async def test_streamed_tool_call_opens_as_openai_does(venv: Env, case: Case) -> None:
    """The role comes in the call's first chunk with content null, as OpenAI streams a tool
    call; a chunk with content "" before it reads as an empty text part (Vercel AI SDK)."""
    case.behavior.reply.tool_calls = CALLS
    case.behavior.reply.text = ""
    async with venv.http.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": case.vendor.alias, "messages": MESSAGES, "tools": TOOLS, "stream": True},
        headers=auth_headers(venv.principal),
    ) as resp:
        assert resp.status_code == 200
        raw = (await resp.aread()).decode()
    payloads = [json.loads(e.removeprefix("data: ")) for e in raw.split("\n\n")[:-2]]
    [first] = payloads[0]["choices"]
    [call] = first["delta"]["tool_calls"]
    opening = {"role": "assistant", "content": None, "tool_calls": [call]}
    if case.vendor.provider == "azure":
        opening["refusal"] = None  # passed through as Azure sends it
    assert first["delta"] == opening
    assert (first["index"], first["finish_reason"]) == (0, None)
    assert (call["index"], call["type"], call["function"]["name"]) == (0, "function", "get_weather")
    assert call["id"]
    later = [p["choices"][0]["delta"] for p in payloads[1:]]
    assert not any("role" in d or "content" in d for d in later)


@pytest.mark.parametrize("stream", [False, True])
async def test_text_before_a_tool_call(venv: Env, case: Case, stream: bool) -> None:
    case.behavior.reply.text = "Let me check the weather."
    case.behavior.reply.tool_calls = CALLS[:1]
    if not stream:
        resp = await venv.client.chat.completions.create(
            model=case.vendor.alias, messages=MESSAGES, tools=TOOLS
        )
        message = resp.choices[0].message
        assert message.content == "Let me check the weather."
        assert message.tool_calls and len(message.tool_calls) == 1
        assert resp.choices[0].finish_reason == "tool_calls"
        return
    chunks = await venv.client.chat.completions.create(
        model=case.vendor.alias, messages=MESSAGES, tools=TOOLS, stream=True
    )
    text, args, finish = "", "", None
    async for chunk in chunks:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                args += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert text == "Let me check the weather."
    assert json.loads(args) == {"city": "Paris"}
    assert finish == "tool_calls"


async def test_tool_result_round_trip(venv: Env, case: Case) -> None:
    """The SDK's assistant tool call and the tool result go back to the vendor in its shape."""
    case.behavior.reply.tool_calls = CALLS[:1]
    case.behavior.reply.text = ""
    first = await venv.client.chat.completions.create(
        model=case.vendor.alias, messages=MESSAGES, tools=TOOLS
    )
    assistant = first.choices[0].message
    assert assistant.tool_calls
    call_id = assistant.tool_calls[0].id
    case.behavior.reply.tool_calls = []
    case.behavior.reply.text = "It is sunny in Paris."
    history: list[ChatCompletionMessageParam] = [
        *MESSAGES,
        assistant.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": call_id, "content": '{"sky": "sunny"}'},
    ]
    second = await venv.client.chat.completions.create(
        model=case.vendor.alias, messages=history, tools=TOOLS
    )
    assert second.choices[0].message.content == "It is sunny in Paris."
    body = case.chat_requests()[-1]["json"]
    provider = case.vendor.provider
    if provider == "anthropic":
        use, result = body["messages"][1]["content"][0], body["messages"][2]["content"][0]
        assert (use["type"], use["id"], use["input"]) == ("tool_use", call_id, {"city": "Paris"})
        assert (result["type"], result["tool_use_id"]) == ("tool_result", call_id)
    elif provider == "gemini":
        model_turn, user_turn = body["contents"][1], body["contents"][2]
        assert model_turn["role"] == "model"
        assert model_turn["parts"][0]["functionCall"] == {
            "name": "get_weather",
            "args": {"city": "Paris"},
        }
        # Gemini's thought signature made the round trip through the OpenAI client
        assert model_turn["parts"][0]["thoughtSignature"] == gemini_fake.SIGNATURE
        assert user_turn["parts"][0]["functionResponse"] == {
            "name": "get_weather",
            "response": {"sky": "sunny"},
        }
    elif provider == "ollama":
        assert body["messages"][1]["tool_calls"][0]["function"] == {
            "name": "get_weather",
            "arguments": {"city": "Paris"},
        }
        assert body["messages"][2] == {
            "role": "tool",
            "content": '{"sky": "sunny"}',
            "tool_name": "get_weather",
        }
    else:
        assert body["messages"][1]["tool_calls"][0]["id"] == call_id
        assert body["messages"][2]["tool_call_id"] == call_id


# ------------------------------------------------------------------------------ errors


async def test_vendor_429_is_a_rate_limit_error(venv: Env, case: Case) -> None:
    case.behavior.status = 429
    case.behavior.error_message = "slow down please"
    case.behavior.retry_after = "30"  # longer than we wait: no retry of the same target
    with pytest.raises(openai.RateLimitError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert exc.value.status_code == 429
    assert exc.value.code == "upstream_rate_limited"
    assert "slow down please" in exc.value.message
    assert exc.value.response.headers["retry-after"] == "30"
    assert len(case.chat_requests()) == 1
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"
    assert events[0]["prompt_tokens"] == 0 and Decimal(events[0]["cost_usd"]) == 0

    with pytest.raises(openai.RateLimitError):
        await venv.client.chat.completions.create(
            model=case.vendor.alias, messages=MESSAGES, stream=True
        )


async def test_vendor_429_without_hint_is_retried_once(venv: Env, case: Case) -> None:
    case.behavior.status = 429
    with pytest.raises(openai.RateLimitError):
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert len(case.chat_requests()) == 2  # settings: retries=1


async def test_vendor_401_is_our_credentials_problem_not_the_callers(venv: Env, case: Case) -> None:
    """A vendor rejecting aistack's key is a gateway failure (502), never a 401 that would
    tell the caller their own key is wrong."""
    case.behavior.status = 401
    case.behavior.error_message = "invalid x-api-key"
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_auth_failed"
    assert len(case.chat_requests()) == 1, "not retried"
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_azure_wrong_key_is_a_502(venv: Env) -> None:
    # the real path to an Azure 401: the fake checks the api-key header
    provider = venv.service.providers["azure"]
    provider.client.headers["api-key"] = "wrong"  # type: ignore[attr-defined]
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model="az", messages=MESSAGES)
    assert exc.value.code == "upstream_auth_failed"
    assert "Access denied" in exc.value.message


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_wrong_key_is_our_credentials_problem(venv: Env, stream: bool) -> None:
    """Google answers a wrong API key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID): that
    is aistack's misconfiguration, not a bad request, so the next target gets a chance and the
    caller never reads "API key not valid" as a verdict on their own key."""
    provider = venv.service.providers["gemini"]
    provider.client.headers["x-goog-api-key"] = "AIza-revoked"  # type: ignore[attr-defined]
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model="gem", messages=MESSAGES, stream=stream)
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_auth_failed"
    assert "API key not valid" in exc.value.message

    raw = await venv.client.chat.completions.with_raw_response.create(
        model="gem-then-az", messages=MESSAGES, stream=stream
    )
    assert raw.headers["x-aistack-provider"] == "azure"
    assert raw.headers["x-aistack-fallbacks"] == "1"


@pytest.mark.parametrize(
    ("status", "code"), [(403, "upstream_auth_failed"), (404, "upstream_not_found")]
)
async def test_vendor_403_and_404_are_configuration_problems(
    venv: Env, case: Case, status: int, code: str
) -> None:
    """A vendor refusing the account (403) or not knowing the routed model (404: an Ollama
    model not pulled, a deleted Azure deployment) is the gateway's 502, not retried."""
    case.behavior.status = status
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert exc.value.status_code == 502
    assert exc.value.code == code
    assert len(case.chat_requests()) == 1


async def test_anthropic_overloaded_is_retried_then_a_503(
    venv: Env, upstreams: dict[str, Upstream]
) -> None:
    anthropic = upstreams["anthropic"]
    anthropic.behavior.status = 529
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model="claude", messages=MESSAGES)
    # overloaded, not broken: 503, which clients retry later
    assert exc.value.status_code == 503
    assert exc.value.code == "upstream_overloaded"
    assert "overloaded_error" in exc.value.message
    assert len(anthropic.behavior.requests) == 2


async def test_slow_vendor_times_out(venv: Env, case: Case) -> None:
    case.behavior.delay = 1.0
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as exc:
            await venv.client.chat.completions.create(
                model=case.vendor.alias,
                messages=MESSAGES,
                stream=stream,
                extra_headers={"x-aistack-timeout": "0.2"},
            )
        assert exc.value.status_code == 504


@pytest.mark.parametrize("alias", ["claude", "llama"])
async def test_n_above_one_is_refused_where_the_vendor_has_one_choice(
    venv: Env, upstreams: dict[str, Upstream], alias: str
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await venv.client.chat.completions.create(model=alias, messages=MESSAGES, n=2)
    assert "n must be 1" in exc.value.message
    assert all(not u.behavior.requests for u in upstreams.values())
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_vendor_400_is_a_bad_request_with_the_vendors_message(venv: Env, case: Case) -> None:
    case.behavior.status = 400
    case.behavior.error_message = "prompt is too long: 300000 tokens > 200000 maximum"
    with pytest.raises(openai.BadRequestError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert "prompt is too long" in exc.value.message
    assert len(case.chat_requests()) == 1, "a request error is not retried"


async def test_vendor_5xx_is_retried_then_a_502(venv: Env, case: Case) -> None:
    case.behavior.status = 500
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert exc.value.status_code == 502
    assert len(case.chat_requests()) == 2


async def test_vendor_stream_breaking_midway_reports_in_band(venv: Env, case: Case) -> None:
    # cut the vendor's stream two thirds of the way in: after the first chunks, before the end
    case.behavior.break_after = len(stream_payload(case)) * 2 // 3
    stream = await venv.client.chat.completions.create(
        model=case.vendor.alias, messages=MESSAGES, stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert got, "bytes reached the client before the break"
    assert "Upstream stream failed" in exc.value.message
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_malformed_vendor_answer_is_a_502(venv: Env, case: Case) -> None:
    case.behavior.malformed = True
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_bad_response"


# ------------------------------------------------------------------------------ embeddings


async def test_embeddings(venv: Env, embed_case: Case) -> None:
    vendor = embed_case.vendor
    assert vendor.embed_alias
    embed_case.behavior.embeddings = [[0.25, -0.5, 1.0], [0.125, 0.0, -2.0]]
    resp = await venv.client.embeddings.create(model=vendor.embed_alias, input=["hello", "world"])
    assert resp.object == "list"
    assert [d.index for d in resp.data] == [0, 1]
    assert resp.data[0].embedding == pytest.approx([0.25, -0.5, 1.0])
    assert resp.data[1].embedding == pytest.approx([0.125, 0.0, -2.0])
    floats = await venv.client.embeddings.create(
        model=vendor.embed_alias, input="hello", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx([0.25, -0.5, 1.0])

    sent = embed_case.behavior.requests[0]
    if vendor.provider == "azure":
        assert sent["path"] == "/openai/deployments/emb/embeddings"
        assert sent["json"]["input"] == ["hello", "world"]
        assert "encoding_format" not in sent["json"]  # the SDK's base64 is aistack's business
    elif vendor.provider == "gemini":
        assert sent["path"] == f"/v1beta/models/{vendor.embed_model}:batchEmbedContents"
        assert [r["content"]["parts"][0]["text"] for r in sent["json"]["requests"]] == [
            "hello",
            "world",
        ]
    else:
        assert sent["path"] == "/api/embed"
        assert sent["json"] == {"model": vendor.embed_model, "input": ["hello", "world"]}

    events = await venv.usage_events()
    assert len(events) == 2
    assert {e["kind"] for e in events} == {"embedding"}
    assert {(e["provider"], e["model"]) for e in events} == {(vendor.provider, vendor.embed_model)}
    if vendor.provider == "gemini":
        # Gemini reports no token counts: aistack's own count is billed, never zero
        assert resp.usage.prompt_tokens > 0
    else:
        assert resp.usage.prompt_tokens == 4  # what the fake vendor reports
    assert sorted(e["prompt_tokens"] for e in events) == sorted(
        [resp.usage.prompt_tokens, floats.usage.prompt_tokens]
    )
    assert sum(e["prompt_tokens"] for e in events) == (
        resp.usage.prompt_tokens + floats.usage.prompt_tokens
    )


async def test_gemini_embeds_more_inputs_than_one_batch_takes(
    venv: Env, upstreams: dict[str, Upstream]
) -> None:
    """batchEmbedContents takes at most 100 inputs; a larger request (OpenAI allows 2048) is
    split, and the vectors come back in input order."""
    gemini = upstreams["gemini"]
    gemini.behavior.embeddings = []  # the fake answers a vector derived from each text
    texts = [f"chunk {i} of a long document" for i in range(gemini_fake.MAX_BATCH * 2 + 30)]
    resp = await venv.client.embeddings.create(model="gem-embed", input=texts)
    assert [d.index for d in resp.data] == list(range(len(texts)))
    assert [d.embedding for d in resp.data] == [gemini_fake.derived_embedding(t) for t in texts]
    sizes = sorted(len(r["json"]["requests"]) for r in gemini.behavior.requests)
    assert sizes == [30, gemini_fake.MAX_BATCH, gemini_fake.MAX_BATCH]
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["prompt_tokens"] == resp.usage.prompt_tokens > 0


async def test_embedding_dimensions_are_forwarded(venv: Env, embed_case: Case) -> None:
    vendor = embed_case.vendor
    assert vendor.embed_alias
    embed_case.behavior.embeddings = [[0.5, 0.5]]
    await venv.client.embeddings.create(model=vendor.embed_alias, input="x", dimensions=2)
    body = embed_case.behavior.last["json"]
    if vendor.provider == "gemini":
        assert body["requests"][0]["outputDimensionality"] == 2
    else:
        assert body["dimensions"] == 2


async def test_vendor_error_on_embeddings(venv: Env, embed_case: Case) -> None:
    vendor = embed_case.vendor
    assert vendor.embed_alias
    embed_case.behavior.status = 429
    embed_case.behavior.retry_after = "30"
    with pytest.raises(openai.RateLimitError):
        await venv.client.embeddings.create(model=vendor.embed_alias, input="x")
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_embeddings_on_a_vendor_without_them_is_a_400(venv: Env) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await venv.client.embeddings.create(model="claude-embed", input="x")
    assert "does not support embeddings" in exc.value.message


# ------------------------------------------------------------------------------ models


async def test_model_list_names_every_vendor_alias(venv: Env) -> None:
    models = {m.id: m async for m in venv.client.models.list()}
    expected = {v.alias for v in VENDORS.values()} | {
        v.embed_alias for v in VENDORS.values() if v.embed_alias
    }
    assert expected <= set(models)
    for vendor in VENDORS.values():
        chat = models[vendor.alias]
        assert chat.owned_by == "aistack"
        assert chat.model_extra is not None
        assert chat.model_extra["type"] == "chat"
        assert chat.model_extra["targets"] == [f"{vendor.provider}/{vendor.model}"]
        assert chat.model_extra["context_window"] == 128000
        if vendor.embed_alias:
            embed = models[vendor.embed_alias]
            assert embed.model_extra is not None and embed.model_extra["type"] == "embedding"
            assert embed.model_extra["targets"] == [f"{vendor.provider}/{vendor.embed_model}"]
    one = await venv.client.models.retrieve("claude")
    assert one.id == "claude"


async def test_provider_model_addressed_directly(venv: Env, case: Case) -> None:
    """``<provider>/<model>`` reaches the vendor without an alias (price 0)."""
    resp = await venv.client.chat.completions.create(
        model=f"{case.vendor.provider}/{case.vendor.model}", messages=MESSAGES
    )
    assert resp.choices[0].message.content == TEXT
    events = await venv.usage_events()
    assert (events[0]["provider"], events[0]["model"]) == (case.vendor.provider, case.vendor.model)
    assert Decimal(events[0]["cost_usd"]) == 0


# ------------------------------------------------------------------------------ local


@pytest.mark.slow
async def test_local_model_through_the_api(venv: Env) -> None:
    stream = await venv.client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        # loading the model on first use outlasts the fixture's 3 s idle timeout
        extra_headers={"x-aistack-timeout": "120"},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["length"], ["stop"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 4
    events = await venv.usage_events()
    assert len(events) == 1
    ev = events[0]
    assert (ev["provider"], ev["model"]) == ("local", "smollm2-135m-instruct")
    assert (ev["prompt_tokens"], ev["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


async def test_azure_time_to_first_token_waits_for_a_choice(
    venv: Env, upstreams: dict[str, Upstream]
) -> None:
    # Azure opens its stream at once with a content-filter chunk that has no choices; the time
    # to first token is when the first choice arrives, not that
    upstreams["azure"].behavior.pause_after_first = 0.3
    stream = await venv.client.chat.completions.create(model="az", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    events = await venv.usage_events()
    assert len(events) == 1
    assert events[0]["ttft_ms"] >= 300, events[0]["ttft_ms"]
