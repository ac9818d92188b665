"""OpenAI's Responses API (``/v1/responses``) over the chat pipeline, driven by the real
``openai`` SDK against the llm app in front of a fake OpenAI upstream (exact wire format).

Every response body and every stream event is also validated with the SDK's own types
(``openai.types.responses``), which the SDK itself does not do when it reads them."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.responses import Response
from pydantic import BaseModel

from libs.testing import auth_headers
from tests.support.fakes.vendor_common import ToolCall
from tests.support.responses import WEATHER, raw_events, upstream_body
from tests.support.stacks.llm import Env


async def raw(env: Env, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    """POST /v1/responses as JSON; the body validated strictly with the SDK's type."""
    resp = await env.http.post(
        "/v1/responses", json=body, headers={**auth_headers(env.principal), **headers}
    )
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    Response.model_validate(data, strict=False)
    return data


# ------------------------------------------------------------------------------ whole answers


async def test_plain_text(env: Env) -> None:
    resp = await env.client.responses.create(model="default", input="Say hello")
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.status == "completed" and resp.incomplete_details is None
    assert resp.output_text == "Hello there, how can I help?"
    [item] = resp.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.id.startswith("msg_")
    assert [c.model_dump(exclude_none=True) for c in item.content] == [
        {"type": "output_text", "text": "Hello there, how can I help?", "annotations": [],
         "logprobs": []}
    ]  # fmt: skip
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (
        12,
        7,
        19,
    )
    assert resp.usage.input_tokens_details.cached_tokens == 0
    assert resp.usage.output_tokens_details.reasoning_tokens == 0
    body = upstream_body(env)
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [{"role": "user", "content": "Say hello"}]

    # one usage event, the chat pipeline's, for the same request id
    events = await env.usage_events()
    assert len(events) == 1
    ev = events[0]
    assert ev["request_id"] == "chatcmpl-" + resp.id.removeprefix("resp_")
    assert (ev["kind"], ev["status"], ev["prompt_tokens"], ev["completion_tokens"]) == (
        "response",
        "ok",
        12,
        7,
    )


async def test_response_object_echoes_the_request(env: Env) -> None:
    data = await raw(
        env,
        {
            "model": "default",
            "input": "Hi",
            "instructions": "Be brief.",
            "temperature": 0.2,
            "top_p": 0.9,
            "max_output_tokens": 50,
            "metadata": {"ticket": "42"},
            "user": "u-1",
            "store": True,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
        },
    )
    assert data["object"] == "response" and data["status"] == "completed"
    assert data["instructions"] == "Be brief."
    assert (data["temperature"], data["top_p"], data["max_output_tokens"]) == (0.2, 0.9, 50)
    assert data["metadata"] == {"ticket": "42"} and data["user"] == "u-1"
    assert data["store"] is True
    assert data["tools"][0]["name"] == "get_weather"
    assert data["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert data["parallel_tool_calls"] is False
    assert data["text"] == {"format": {"type": "text"}}
    assert data["error"] is None and data["previous_response_id"] is None

    body = upstream_body(env)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert (body["temperature"], body["top_p"], body["max_completion_tokens"]) == (0.2, 0.9, 50)
    assert body["user"] == "u-1"
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    # Responses-only fields never reach a chat upstream
    for key in ("metadata", "store", "instructions", "input", "max_output_tokens", "text"):
        assert key not in body


async def test_multi_turn_input_items(env: Env) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    items: Any = [
        {"role": "developer", "content": "Prefer metric units."},
        {"role": "user", "content": "Hi"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is in this picture?"},
                {"type": "input_image", "image_url": image, "detail": "low"},
            ],
        },
    ]
    await env.client.responses.create(model="default", instructions="You are terse.", input=items)
    assert upstream_body(env)["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Prefer metric units."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
            ],
        },
    ]


async def test_tool_call_round_trip(env: Env) -> None:
    env.primary.behavior.reply.tool_calls = [ToolCall("get_weather", {"city": "Paris"})]
    env.primary.behavior.reply.text = ""
    first = await env.client.responses.create(
        model="default", input="Weather in Paris?", tools=[WEATHER]
    )
    assert first.status == "completed"
    [call] = first.output
    assert call.type == "function_call" and call.status == "completed"
    assert (call.call_id, call.name) == ("call_fake0000", "get_weather")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.id and call.id.startswith("fc_")

    # the caller runs the tool and sends everything back, as the SDK docs show
    env.primary.behavior.reply.tool_calls = []
    env.primary.behavior.reply.text = "It is 21 degrees in Paris."
    history: list[Any] = [{"role": "user", "content": "Weather in Paris?"}, *first.output]
    history.append(
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}
    )
    second = await env.client.responses.create(model="default", input=history, tools=[WEATHER])
    assert second.output_text == "It is 21 degrees in Paris."
    assert upstream_body(env)["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_fake0000",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_fake0000", "content": '{"temp_c": 21}'},
    ]
    assert len(await env.usage_events()) == 2


async def test_text_then_parallel_tool_calls(env: Env) -> None:
    env.primary.behavior.reply.text = "Checking both."
    env.primary.behavior.reply.tool_calls = [
        ToolCall("get_weather", {"city": "Paris"}),
        ToolCall("get_weather", {"city": "Rome"}),
    ]
    data = await raw(env, {"model": "default", "input": "Paris and Rome?", "tools": [WEATHER]})
    assert [o["type"] for o in data["output"]] == ["message", "function_call", "function_call"]
    assert data["output"][0]["content"][0]["text"] == "Checking both."
    assert [o["call_id"] for o in data["output"][1:]] == ["call_fake0000", "call_fake0001"]
    assert len({o["id"] for o in data["output"]}) == 3

    # sent back whole, the message and its calls are one assistant turn again
    history = [*data["output"]]
    history += [
        {"type": "function_call_output", "call_id": c, "output": "sunny"}
        for c in ("call_fake0000", "call_fake0001")
    ]
    await raw(env, {"model": "default", "input": history, "tools": [WEATHER]})
    messages = upstream_body(env)["messages"]
    assert [m["role"] for m in messages] == ["assistant", "tool", "tool"]
    assert messages[0]["content"] == "Checking both."
    assert [c["id"] for c in messages[0]["tool_calls"]] == ["call_fake0000", "call_fake0001"]


async def test_json_schema_output(env: Env) -> None:
    class City(BaseModel):
        name: str
        population: int

    env.primary.behavior.reply.text = '{"name": "Paris", "population": 2100000}'
    parsed = await env.client.responses.parse(
        model="default", input="Biggest French city?", text_format=City
    )
    assert parsed.output_parsed == City(name="Paris", population=2100000)
    fmt = upstream_body(env)["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "City" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["required"] == ["name", "population"]

    await env.client.responses.create(
        model="default", input="JSON please", text={"format": {"type": "json_object"}}
    )
    assert upstream_body(env)["response_format"] == {"type": "json_object"}


async def test_max_output_tokens_makes_it_incomplete(env: Env) -> None:
    env.primary.behavior.reply.stop = "length"
    resp = await env.client.responses.create(
        model="default", input="Tell me a story", max_output_tokens=7
    )
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    item = resp.output[0]
    assert item.type == "message" and item.status == "incomplete"
    assert resp.output_text == "Hello there, how can I help?"
    assert upstream_body(env)["max_completion_tokens"] == 7


async def test_idempotent_retry_replays_the_response(env: Env) -> None:
    key = {"Idempotency-Key": "resp-retry-1"}
    body = {"model": "default", "input": "Once only"}
    first = await raw(env, body, **key)
    again = await raw(env, body, **key)
    assert again["id"] == first["id"] and again["output"] == first["output"]
    assert env.primary.chat_calls == 1
    assert len(await env.usage_events()) == 1


async def test_aistack_extras_pass_through(env: Env) -> None:
    # aistack's own chat fields and chat parameters Responses lacks travel on (extra_body)
    await env.client.responses.create(
        model="default", input="Hi", extra_body={"seed": 7, "stop": ["END"], "cache": False}
    )
    body = upstream_body(env)
    assert (body["seed"], body["stop"]) == (7, ["END"])
    assert "cache" not in body


# ------------------------------------------------------------------------------ streaming


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def test_streaming_text_events_in_order(env: Env) -> None:
    events = await raw_events(env, {"model": "default", "input": "Say hello"})
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    text = "Hello there, how can I help?"
    assert "".join(e["delta"] for e in deltas) == text
    assert len(deltas) > 1
    assert _types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    rid = events[0]["response"]["id"]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    done = events[-1]["response"]
    assert done["id"] == rid and done["status"] == "completed"
    assert done["output"][0]["content"][0]["text"] == text
    assert done["usage"]["input_tokens"] == 12 and done["usage"]["output_tokens"] == 7
    assert events[-4]["text"] == text
    item_id = events[2]["item"]["id"]
    assert all(e["item_id"] == item_id for e in events[3:-2])

    usage = await env.usage_events()
    assert len(usage) == 1
    assert usage[0]["request_id"] == "chatcmpl-" + rid.removeprefix("resp_")
    assert (usage[0]["status"], usage[0]["completion_tokens"]) == ("ok", 7)


async def test_sdk_stream_helper_and_final_response(env: Env) -> None:
    seen: list[str] = []
    async with env.client.responses.stream(model="default", input="Say hello") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                seen.append(event.delta)
        final = await stream.get_final_response()
    assert "".join(seen) == final.output_text == "Hello there, how can I help?"
    assert final.status == "completed"
    assert final.usage is not None and final.usage.total_tokens == 19

    stream2 = await env.client.responses.create(model="default", input="Again", stream=True)
    kinds = [event.type async for event in stream2]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert len(await env.usage_events()) == 2


async def test_streaming_tool_calls(env: Env) -> None:
    env.primary.behavior.reply.text = ""
    env.primary.behavior.reply.tool_calls = [
        ToolCall("get_weather", {"city": "Paris"}),
        ToolCall("get_weather", {"city": "Rome"}),
    ]
    events = await raw_events(
        env, {"model": "default", "input": "Paris and Rome?", "tools": [WEATHER]}
    )
    kinds = _types(events)
    assert "response.content_part.added" not in kinds  # no text: no message item
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [
        (0, "function_call"),
        (1, "function_call"),
    ]
    for index, city in ((0, "Paris"), (1, "Rome")):
        mine = [e for e in events if e.get("output_index") == index]
        assert _types(mine)[0] == "response.output_item.added"
        assert set(_types(mine)[1:-2]) == {"response.function_call_arguments.delta"}
        assert _types(mine)[-2:] == [
            "response.function_call_arguments.done",
            "response.output_item.done",
        ]
        args = "".join(e["delta"] for e in mine if "delta" in e)
        assert json.loads(args) == {"city": city}
        assert mine[-2]["arguments"] == args and mine[-2]["name"] == "get_weather"
    # each call closes before the next opens, as OpenAI streams them
    assert kinds.index("response.output_item.done") < kinds.index("response.output_item.added", 3)
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [(o["call_id"], o["name"]) for o in final["output"]] == [
        ("call_fake0000", "get_weather"),
        ("call_fake0001", "get_weather"),
    ]

    async with env.client.responses.stream(
        model="default", input="Paris and Rome?", tools=[WEATHER]
    ) as stream:
        final_sdk = await stream.get_final_response()
    assert [json.loads(o.arguments) for o in final_sdk.output if o.type == "function_call"] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]


async def test_streaming_cut_by_max_output_tokens(env: Env) -> None:
    env.primary.behavior.reply.stop = "length"
    events = await raw_events(env, {"model": "default", "input": "Story", "max_output_tokens": 7})
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


async def test_stream_broken_midway_fails_the_response(env: Env) -> None:
    env.primary.behavior.break_after = 700  # a few chunks, then the connection drops
    events = await raw_events(env, {"model": "default", "input": "Say hello"})
    kinds = _types(events)
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds
    assert kinds[-2:] == ["error", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert "Upstream stream failed" in failed["error"]["message"]
    assert failed["output"][0]["status"] == "incomplete"
    usage = await env.usage_events()
    assert [u["status"] for u in usage] == ["error"]

    # the SDK's stream helper has no final response to give
    async with env.client.responses.stream(model="default", input="Say hello") as stream:
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            await stream.get_final_response()


async def test_streamed_idempotent_replay(env: Env) -> None:
    headers = {**auth_headers(env.principal), "Idempotency-Key": "resp-stream-1"}
    body = {"model": "default", "input": "Say hello", "stream": True}
    texts = []
    for _ in range(2):
        resp = await env.http.post("/v1/responses", json=body, headers=headers)
        assert resp.status_code == 200
        frames = [json.loads(line[6:]) for line in resp.text.split("\n") if line[:6] == "data: "]
        assert frames[-1]["type"] == "response.completed"
        texts.append((frames[-1]["response"]["id"], frames[-1]["response"]["output"]))
    assert env.primary.chat_calls == 1
    assert texts[0] == texts[1]


# ------------------------------------------------------------------------------ errors


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    return err


async def test_unknown_model_is_404(env: Env) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await env.client.responses.create(model="nope", input="Hi")
    err = _error(info.value)
    assert err["code"] == "model_not_found" and "nope" in err["message"]
    assert env.primary.chat_calls == 0


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "Hi"}, "model", "invalid_request"),
        ({"model": "default"}, "input", "invalid_request"),
        ({"model": "default", "input": 5}, "input", "invalid_request"),
        (
            {"model": "default", "input": [{"role": "tool", "content": "x"}]},
            "input[0].role",
            "invalid_request",
        ),
        (
            {"model": "default", "input": [{"type": "computer_call_output", "call_id": "c"}]},
            "input[0].type",
            "unsupported_input",
        ),
        (
            {
                "model": "default",
                "input": [
                    {"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}
                ],
            },
            "input[0].content[0].type",
            "unsupported_content",
        ),
        (
            {"model": "default", "input": "Hi", "tools": [{"type": "web_search"}]},
            "tools[0].type",
            "unsupported_tool_type",
        ),
        (
            {"model": "default", "input": "Hi", "temperature": 3},
            "temperature",
            "invalid_request",
        ),
        (
            {"model": "default", "input": "Hi", "text": {"format": {"type": "json_schema"}}},
            "text.format.name",
            "invalid_request",
        ),
        ({"model": "default", "input": "Hi", "n": 2}, "n", "unsupported_parameter"),
    ],
)
async def test_bad_requests_are_400_with_param(
    env: Env, body: dict[str, Any], param: str, code: str
) -> None:
    resp = await env.http.post("/v1/responses", json=body, headers=auth_headers(env.principal))
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert (err["type"], err["code"]) == ("invalid_request_error", code)
    # (a body that matches no shape of a field names the shape tried: input.str)
    assert err["param"] == param or err["param"].startswith(param + "."), err
    assert env.primary.chat_calls == 0


async def test_sdk_raises_bad_request_for_unsupported_tools(env: Env) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await env.client.responses.create(
            model="default", input="Hi", tools=[{"type": "web_search"}]
        )
    err = _error(info.value)
    assert err["code"] == "unsupported_tool_type" and "web_search" in err["message"]
    with pytest.raises(openai.NotFoundError):
        await env.client.responses.create(
            model="default", input="Hi", previous_response_id="resp_123", stream=True
        )
    assert await env.usage_events() == []


async def test_upstream_failure_before_the_stream(env: Env) -> None:
    env.primary.behavior.status = 400
    env.primary.behavior.error_message = "Invalid schema for function 'get_weather'"
    with pytest.raises(openai.BadRequestError) as info:
        await env.client.responses.create(model="default", input="Hi", stream=True)
    assert "Invalid schema" in _error(info.value)["message"]
    assert [u["status"] for u in await env.usage_events()] == ["error"]


async def test_unknown_responses_are_not_found(env: Env) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await env.client.responses.retrieve("resp_123")
    assert _error(info.value)["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        await env.client.responses.delete("resp_123")


# ------------------------------------------------------------------------------ aistack extras


async def test_conversation_and_prompt(env: Env) -> None:
    headers = auth_headers(env.principal)
    conv = await env.http.post(
        "/v1/conversations",
        json={"title": "c", "messages": [{"role": "system", "content": "Be brief."}]},
        headers=headers,
    )
    assert conv.status_code == 201, conv.text
    cid = conv.json()["id"]
    # OpenAI's conversation parameter names an aistack conversation
    first = await env.client.responses.create(model="default", input="Hi", conversation=cid)
    assert first.output_text == "Hello there, how can I help?"
    env.primary.behavior.reply.text = "Second answer"
    async with env.client.responses.stream(
        model="default", input="And?", conversation={"id": cid}
    ) as stream:
        final = await stream.get_final_response()
    assert final.output_text == "Second answer"
    assert upstream_body(env)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there, how can I help?"},
        {"role": "user", "content": "And?"},
    ]
    got = (await env.http.get(f"/v1/conversations/{cid}", headers=headers)).json()
    assert [m["content"] for m in got["messages"]][-1] == "Second answer"

    prompt = {
        "name": "greeter",
        "version": {"messages": [{"role": "system", "content": "You are {{ persona }}."}]},
    }
    created = await env.http.post("/v1/prompts", json=prompt, headers=headers)
    assert created.status_code == 201, created.text
    await env.client.responses.create(
        model="default",
        input="Hello",
        extra_body={"prompt": {"name": "greeter", "variables": {"persona": "kind"}}},
    )
    assert upstream_body(env)["messages"] == [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Hello"},
    ]
    with pytest.raises(openai.NotFoundError):
        await env.client.responses.create(
            model="default", input="Hi", conversation="00000000-0000-0000-0000-000000000000"
        )
