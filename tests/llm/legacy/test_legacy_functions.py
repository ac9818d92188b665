"""OpenAI's deprecated ``functions`` / ``function_call`` through the llm app, with the real
``openai`` SDK: vendors without them (Anthropic, Gemini, Ollama fakes, the local model) get
tools and answer as OpenAI answers legacy requests (``function_call``); OpenAI itself gets the
request as sent."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.completion_create_params import Function

from libs.testing import auth_headers
from tests.support.stacks.llm import Env, Upstream
from tests.support.stacks.vendors import (
    CALLS,
    MESSAGES,
    VENDORS,
)

FUNCTIONS: list[Function] = [
    {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
]
TRANSLATED = ["anthropic", "gemini", "ollama"]
PARIS = '{"city": "Paris"}'


def vendor_requests(up: Upstream, vendor: str) -> list[dict[str, Any]]:
    return [r["json"] for r in up.behavior.requests if VENDORS[vendor].chat_path in r["path"]]


def assert_got_tools(body: dict[str, Any], vendor: str, forced: str | None) -> None:
    """The functions reached the vendor as its own tools (not dropped)."""
    if vendor == "anthropic":
        assert [t["name"] for t in body["tools"]] == ["get_weather", "get_time"]
        assert body["tools"][0]["input_schema"] == FUNCTIONS[0]["parameters"]
        expected = {"type": "tool", "name": forced} if forced else {"type": "auto"}
        assert body["tool_choice"] == expected
    elif vendor == "gemini":
        declarations = body["tools"][0]["functionDeclarations"]
        assert [d["name"] for d in declarations] == ["get_weather", "get_time"]
    else:
        assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "get_time"]
    assert "functions" not in body and "function_call" not in body


async def read_legacy_answer(
    resp: ChatCompletion | openai.AsyncStream[ChatCompletionChunk],
) -> tuple[str, str, str | None]:
    """A legacy answer as the SDK reads it, whole or streamed: the function's name, its
    arguments and the finish reason (no tool_calls anywhere)."""
    if not isinstance(resp, openai.AsyncStream):
        [choice] = resp.choices
        fc = choice.message.function_call
        assert choice.message.tool_calls is None and fc is not None
        return fc.name, fc.arguments, choice.finish_reason
    name, args, finish = "", "", None
    async for chunk in resp:
        for c in chunk.choices:
            assert c.delta.tool_calls is None
            if c.delta.function_call:
                name += c.delta.function_call.name or ""
                args += c.delta.function_call.arguments or ""
            finish = c.finish_reason or finish
    return name, args, finish


@pytest.mark.parametrize("vendor", TRANSLATED)
async def test_function_call_answered_in_the_legacy_shape(
    venv: Env, upstreams: dict[str, Upstream], vendor: str
) -> None:
    up = upstreams[vendor]
    up.behavior.reply.tool_calls = CALLS  # two calls: the legacy shape holds the first
    up.behavior.reply.text = ""
    forced = "get_weather" if vendor == "anthropic" else None
    resp = await venv.client.chat.completions.create(
        model=VENDORS[vendor].alias,
        messages=MESSAGES,
        functions=FUNCTIONS,
        function_call={"name": forced} if forced else "auto",
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    assert choice.message.function_call is not None
    assert choice.message.function_call.name == "get_weather"
    assert json.loads(choice.message.function_call.arguments) == {"city": "Paris"}
    assert_got_tools(vendor_requests(up, vendor)[-1], vendor, forced)


@pytest.mark.parametrize("vendor", TRANSLATED)
async def test_streamed_function_call_in_the_legacy_shape(
    venv: Env, upstreams: dict[str, Upstream], vendor: str
) -> None:
    up = upstreams[vendor]
    up.behavior.reply.tool_calls = CALLS[:1]
    up.behavior.reply.text = ""
    async with venv.http.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": VENDORS[vendor].alias,
            "messages": MESSAGES,
            "functions": FUNCTIONS,
            "stream": True,
        },
        headers=auth_headers(venv.principal),
    ) as resp:
        assert resp.status_code == 200
        raw = (await resp.aread()).decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    choices = [json.loads(e.removeprefix("data: "))["choices"][0] for e in events[:-2]]
    deltas = [c["delta"] for c in choices]
    assert not any("tool_calls" in d for d in deltas)
    calls = [d["function_call"] for d in deltas if "function_call" in d]
    # the name once, in the first fragment; then argument fragments only (no id/type/index)
    assert calls[0]["name"] == "get_weather"
    assert all(set(c) <= {"name", "arguments"} for c in calls)
    assert not any("name" in c for c in calls[1:])
    assert json.loads("".join(c.get("arguments", "") for c in calls)) == {"city": "Paris"}
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["function_call"]
    assert_got_tools(vendor_requests(up, vendor)[-1], vendor, None)

    # and the SDK reads it as the legacy stream it knows
    stream = await venv.client.chat.completions.create(
        model=VENDORS[vendor].alias, messages=MESSAGES, functions=FUNCTIONS, stream=True
    )
    name, args, finish = await read_legacy_answer(stream)
    assert (name, json.loads(args), finish) == ("get_weather", {"city": "Paris"}, "function_call")


def legacy_history() -> list[ChatCompletionMessageParam]:
    return [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": PARIS},
        },
        {"role": "function", "name": "get_weather", "content": '{"sky": "sunny"}'},
    ]


# as forwarded: the messages as sent, without their null fields (content null)
SENT_HISTORY = [
    *MESSAGES,
    {"role": "assistant", "function_call": {"name": "get_weather", "arguments": PARIS}},
    {"role": "function", "name": "get_weather", "content": '{"sky": "sunny"}'},
]


@pytest.mark.parametrize("vendor", TRANSLATED)
async def test_legacy_history_reaches_the_vendor_as_tool_use_and_result(
    venv: Env, upstreams: dict[str, Upstream], vendor: str
) -> None:
    up = upstreams[vendor]
    up.behavior.reply.text = "It is sunny in Paris."
    for _ in range(2):
        resp = await venv.client.chat.completions.create(
            model=VENDORS[vendor].alias, messages=legacy_history(), functions=FUNCTIONS
        )
        assert resp.choices[0].message.content == "It is sunny in Paris."
        assert resp.choices[0].finish_reason == "stop"
    first, second = vendor_requests(up, vendor)
    if vendor == "anthropic":
        [use], [result] = first["messages"][1]["content"], first["messages"][2]["content"]
        assert (use["type"], use["name"], use["input"]) == (
            "tool_use",
            "get_weather",
            {"city": "Paris"},
        )
        assert (result["type"], result["tool_use_id"]) == ("tool_result", use["id"])
        assert first["messages"][2]["role"] == "user"
        # the synthesized id is stable: the same history is the same request
        assert second["messages"] == first["messages"]
    elif vendor == "gemini":
        model_turn, user_turn = first["contents"][1], first["contents"][2]
        assert model_turn["parts"][0]["functionCall"] == {
            "name": "get_weather",
            "args": {"city": "Paris"},
        }
        assert user_turn["parts"][0]["functionResponse"] == {
            "name": "get_weather",
            "response": {"sky": "sunny"},
        }
    else:
        assert first["messages"][1]["tool_calls"][0]["function"] == {
            "name": "get_weather",
            "arguments": {"city": "Paris"},
        }
        assert first["messages"][2] == {
            "role": "tool",
            "content": '{"sky": "sunny"}',
            "tool_name": "get_weather",
        }


async def test_function_result_without_a_call_is_a_400(venv: Env) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await venv.client.chat.completions.create(
            model="claude",
            messages=[*MESSAGES, {"role": "function", "name": "get_weather", "content": "{}"}],
            functions=FUNCTIONS,
        )
    assert info.value.param == "messages.1"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"functions": FUNCTIONS, "tools": [{"type": "function", "function": FUNCTIONS[1]}]},
            "functions",
        ),
        ({"functions": FUNCTIONS, "function_call": "auto", "tool_choice": "auto"}, "function_call"),
        ({"function_call": "auto"}, "function_call"),
        ({"functions": FUNCTIONS, "function_call": "sometimes"}, "function_call"),
        ({"functions": [{"description": "no name"}]}, "functions.0.name"),
    ],
)
@pytest.mark.parametrize("model", ["claude", "az"])
async def test_mixed_or_malformed_legacy_parameters_are_a_400(
    venv: Env, upstreams: dict[str, Upstream], model: str, extra: dict[str, Any], param: str
) -> None:
    resp = await venv.http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, **extra},
        headers=auth_headers(venv.principal),
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert not any(up.behavior.requests for up in upstreams.values())


@pytest.mark.parametrize("stream", [False, True])
async def test_idempotent_replay_and_cache_hit_keep_the_legacy_shape(
    venv: Env, upstreams: dict[str, Upstream], stream: bool
) -> None:
    up = upstreams["anthropic"]
    up.behavior.reply.tool_calls = CALLS[:1]
    up.behavior.reply.text = ""

    async def call(**kw: Any) -> tuple[dict[str, str], str, str, str | None]:
        raw = await venv.client.chat.completions.with_raw_response.create(
            model="claude", messages=MESSAGES, functions=FUNCTIONS, stream=stream, **kw
        )
        resp = raw.parse()
        assert isinstance(resp, openai.AsyncStream) == stream
        return dict(raw.headers), *await read_legacy_answer(resp)

    key = {"extra_headers": {"Idempotency-Key": f"legacy-{stream}"}}
    fresh = await call(**key)
    replay = await call(**key)
    assert replay[0].get("x-aistack-idempotent-replay") == "true"
    assert fresh[1:] == replay[1:] == ("get_weather", PARIS, "function_call")

    cached = {"temperature": 0}
    await call(**cached)
    await venv.service.drain()  # the cache write happens off the response path
    hit = await call(**cached)
    assert hit[0].get("x-aistack-cache") == "hit"
    assert hit[1:] == ("get_weather", PARIS, "function_call")
    assert len(vendor_requests(up, "anthropic")) == 2


# ------------------------------------------------------------------------------ passthrough


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_and_azure_get_the_legacy_parameters_as_sent(
    venv: Env, upstreams: dict[str, Upstream], stream: bool
) -> None:
    up = upstreams["azure"]
    up.behavior.reply.tool_calls = CALLS[:1]
    up.behavior.reply.text = ""
    history = legacy_history()
    for key in ("once", "once"):  # the second is an idempotent replay
        raw = await venv.client.chat.completions.with_raw_response.create(
            model="az",
            messages=history,
            functions=FUNCTIONS,
            function_call={"name": "get_weather"},
            stream=stream,
            extra_headers={"Idempotency-Key": f"{key}-{stream}"},
        )
        name, args, finish = await read_legacy_answer(raw.parse())
        assert (name, json.loads(args), finish) == (
            "get_weather",
            {"city": "Paris"},
            "function_call",
        )
    assert raw.headers.get("x-aistack-idempotent-replay") == "true"
    [body] = vendor_requests(up, "azure")
    assert body["functions"] == FUNCTIONS
    assert body["function_call"] == {"name": "get_weather"}
    assert body["messages"] == SENT_HISTORY
    assert "tools" not in body and "tool_choice" not in body


async def test_openai_passthrough(env: Env) -> None:
    env.primary.behavior.reply.tool_calls = CALLS[:1]
    env.primary.behavior.reply.text = ""
    resp = await env.client.chat.completions.create(
        model="default", messages=legacy_history(), functions=FUNCTIONS, function_call="auto"
    )
    fc = resp.choices[0].message.function_call
    assert fc is not None and (fc.name, json.loads(fc.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )
    assert resp.choices[0].finish_reason == "function_call"
    body = env.primary.behavior.last["json"]
    assert (body["functions"], body["function_call"]) == (FUNCTIONS, "auto")
    assert body["messages"] == SENT_HISTORY and "tools" not in body


# ------------------------------------------------------------------------------ local model


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
async def test_local_model_answers_a_forced_function_call(venv: Env, stream: bool) -> None:
    kw: Any = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "What time is it?"}],
        "functions": FUNCTIONS,
        "function_call": {"name": "get_time"},
        "max_tokens": 20,
        # loading the model on first use outlasts the fixture's 3 s idle timeout
        "extra_headers": {"x-aistack-timeout": "120"},
    }
    name, args, finish = await read_legacy_answer(
        await venv.client.chat.completions.create(stream=stream, **kw)
    )
    assert (name, json.loads(args), finish) == ("get_time", {}, "function_call")
