"""A fake Anthropic Messages API speaking the exact wire format (payloads validated with
the official ``anthropic`` SDK types so the fake cannot drift from the real API)."""

from __future__ import annotations

import json
from typing import Any

from anthropic.types import ErrorResponse, Message, ModelInfo, RawMessageStreamEvent
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.fakes.vendor_common import Behavior, body_slices, wait_delay

MODEL = "claude-sonnet-4-5"
EVENT = TypeAdapter(RawMessageStreamEvent)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    body = {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
    }
    ErrorResponse.model_validate(body)
    return body


def _stop_reason(behavior: Behavior) -> str:
    reply = behavior.reply
    return reply.stop or ("tool_use" if reply.tool_calls else "end_turn")


def message(behavior: Behavior, model: str) -> dict[str, Any]:
    reply = behavior.reply
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for i, call in enumerate(reply.tool_calls):
        content.append(
            {"type": "tool_use", "id": f"toolu_{i:04d}", "name": call.name, "input": call.arguments}
        )
    body = {
        "id": "msg_01fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(behavior),
        "stop_sequence": None,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens},
    }
    Message.model_validate(body)
    return body


def _pieces(text: str, n: int = 3) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def events(behavior: Behavior, model: str) -> list[dict[str, Any]]:
    reply = behavior.reply
    start = message(behavior, model)
    start.update(content=[], stop_reason=None)
    start["usage"] = {"input_tokens": reply.prompt_tokens, "output_tokens": 1}
    out: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
    index = 0
    if reply.text:
        out.append(
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            }
        )
        for piece in _pieces(reply.text):
            out.append(
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": piece},
                }
            )
        out.append({"type": "content_block_stop", "index": index})
        index += 1
    for i, call in enumerate(reply.tool_calls):
        block = {"type": "tool_use", "id": f"toolu_{i:04d}", "name": call.name, "input": {}}
        out.append({"type": "content_block_start", "index": index, "content_block": block})
        # a call without arguments streams one empty partial_json and nothing else
        pieces = _pieces(json.dumps(call.arguments)) if call.arguments else []
        for piece in ["", *pieces]:
            delta = {"type": "input_json_delta", "partial_json": piece}
            out.append({"type": "content_block_delta", "index": index, "delta": delta})
        out.append({"type": "content_block_stop", "index": index})
        index += 1
    out.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(behavior), "stop_sequence": None},
            "usage": {"output_tokens": reply.completion_tokens},
        }
    )
    out.append({"type": "message_stop"})
    for event in out:
        if event["type"] != "ping":  # ping is on the wire but not in the SDK's event union
            EVENT.validate_python(event)
    return out


def sse(events_: list[dict[str, Any]], behavior: Behavior) -> bytes:
    lines = []
    for i, event in enumerate(events_):
        lines.append(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n")
        if behavior.malformed and i == 1:
            lines.append('event: content_block_delta\ndata: {"type": "content_block_delta", \n\n')
    return "".join(lines).encode()


def make_app(behavior: Behavior) -> Starlette:
    async def messages(request: Request) -> Response:
        body = await request.json()
        behavior.requests.append(
            {
                "path": request.url.path,
                "headers": dict(request.headers),
                "json": body,
                "client": request.client.port if request.client else None,
            }
        )
        if behavior.delay:
            await wait_delay(behavior)
        if behavior.status:
            headers = {"retry-after": behavior.retry_after} if behavior.retry_after else {}
            return JSONResponse(
                error_body(behavior.status, behavior.error_message),
                status_code=behavior.status,
                headers=headers,
            )
        model = body.get("model", MODEL)
        if body.get("stream"):
            payload = sse(events(behavior, model), behavior)
            return StreamingResponse(body_slices(payload, behavior), media_type="text/event-stream")
        if behavior.malformed:
            return Response(b'{"id": "msg_01fake", "content": [', media_type="application/json")
        return JSONResponse(message(behavior, model))

    async def models(request: Request) -> Response:
        behavior.requests.append(
            {"path": request.url.path, "query": dict(request.query_params), "json": None}
        )
        if behavior.status:
            return JSONResponse(
                error_body(behavior.status, behavior.error_message), status_code=behavior.status
            )
        ids = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]
        after = request.query_params.get("after_id")
        start = ids.index(after) + 1 if after else 0
        page = ids[start : start + 2]  # small pages so pagination is exercised
        data = [
            {
                "type": "model",
                "id": i,
                "display_name": i,
                "created_at": "2025-09-29T00:00:00Z",
                "max_input_tokens": 200000,
                "lifecycle": "active",
            }
            for i in page
        ]
        for item in data:
            ModelInfo.model_validate(item)
        return JSONResponse(
            {
                "data": data,
                "has_more": start + 2 < len(ids),
                "first_id": page[0],
                "last_id": page[-1],
            }
        )

    return Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
