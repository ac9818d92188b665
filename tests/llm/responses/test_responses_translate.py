"""The Responses translation on chunk sequences the OpenAI fake does not produce (refusals,
text after a tool call, a call's late arguments, nothing said, a failure before any chunk):
every event validates with the SDK's types and the SDK's own stream state accepts the
sequence and ends with the response we sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from services.llm.responses.schemas import ResponsesRequest
from services.llm.responses.stream import translate_stream
from services.llm.responses.translate import Shape, to_response

EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
ID = "chatcmpl-0123456789abcdef"


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": ID,
        "object": "chat.completion.chunk",
        "created": 1763800000,
        "model": "m-1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


async def _pieces(frames: list[dict[str, Any] | str]) -> AsyncIterator[bytes]:
    for frame in frames:
        data = frame.encode() if isinstance(frame, str) else orjson.dumps(frame)
        raw = b"data: " + data + b"\n\n"
        # split mid-frame, as a relay may hand over bytes
        yield raw[:7]
        yield raw[7:]


async def run(frames: list[dict[str, Any] | str], **request: Any) -> list[dict[str, Any]]:
    shape = Shape(ResponsesRequest.model_validate({"model": "alias", "input": "x", **request}))
    out = b"".join([e async for e in translate_stream(_pieces(frames), shape)])
    events = []
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for block in out.decode().split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        state.handle_event(EVENTS.validate_python(event))  # raises on what the SDK refuses
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


async def test_refusal_then_text() -> None:
    events = await run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"refusal": "I can't "}),
            chunk({"refusal": "help."}),
            chunk({"content": "But here is a tip."}),
            chunk({}, "stop"),
            chunk({}, usage=USAGE) | {"choices": []},
            "[DONE]",
        ]
    )
    kinds = [e["type"] for e in events]
    assert kinds.count("response.refusal.delta") == 2 and "response.refusal.done" in kinds
    final = events[-1]["response"]
    assert final["status"] == "completed"
    [message] = final["output"]
    assert message["content"] == [
        {"type": "refusal", "refusal": "I can't help."},
        {"type": "output_text", "text": "But here is a tip.", "annotations": [], "logprobs": []},
    ]
    assert final["usage"]["total_tokens"] == 8


async def test_text_after_a_tool_call_and_late_arguments() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    events = await run(
        [
            chunk({"tool_calls": [{**call, "function": {"name": "f", "arguments": '{"a"'}}]}),
            chunk({"content": "Meanwhile"}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
            chunk({}, "tool_calls"),
            "[DONE]",
        ]
    )
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["function_call", "message"]
    assert json.loads(final["output"][0]["arguments"]) == {"a": 1}
    assert final["output"][1]["content"][0]["text"] == "Meanwhile"
    assert final["status"] == "completed"
    Response.model_validate(final)


async def test_nothing_said_is_an_empty_message() -> None:
    events = await run([chunk({"role": "assistant"}), chunk({}, "stop"), "[DONE]"])
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message"]
    assert final["output"][0]["content"][0]["text"] == ""
    # and a whole answer of nothing says the same
    completion = {
        "id": ID,
        "created": 1,
        "model": "m-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None}}],
    }
    shape = Shape(ResponsesRequest.model_validate({"model": "alias", "input": "x"}))
    body = to_response(completion, shape)
    Response.model_validate(body)
    assert body["output"][0]["content"][0]["text"] == ""


@pytest.mark.parametrize("first", [True, False])
async def test_failure_before_or_after_output(first: bool) -> None:
    error = {"error": {"message": "Upstream stream failed: boom", "code": "upstream_error"}}
    frames: list[dict[str, Any] | str] = [error] if first else [chunk({"content": "Hi"}), error]
    events = await run(frames)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "upstream_error"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and "boom" in failed["error"]["message"]
    assert [o["status"] for o in failed["output"]] == ([] if first else ["incomplete"])


async def test_a_stream_cut_without_done_fails() -> None:
    events = await run([chunk({"content": "Hi"})])
    assert events[-1]["type"] == "response.failed"


async def test_content_filter_is_incomplete() -> None:
    events = await run([chunk({"content": "Hi"}), chunk({}, "content_filter"), "[DONE]"])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "content_filter"}
