"""Aliases routed to Azure OpenAI, Anthropic, Gemini and Ollama (fakes speaking each vendor's
wire format over real HTTP), called through the llm app with the real ``openai`` SDK: what a
client sees must be OpenAI's format whatever vendor answers."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)

from libs.testing import auth_headers
from tests.support.fakes import gemini_fake, openai_fake
from tests.support.stacks.llm import Env, Upstream
from tests.support.stacks.vendors import (
    ANTHROPIC_KEY,
    CALLS,
    GEMINI_KEY,
    MESSAGES,
    TEXT,
    TOOLS,
    VENDORS,
    Case,
)


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
