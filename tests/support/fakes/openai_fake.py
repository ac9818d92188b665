"""A fake OpenAI API (and Azure OpenAI, with ``azure=True``) speaking the exact wire format;
every payload is validated with the official ``openai`` SDK's types before it is sent."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.fakes.vendor_common import Behavior, body_slices, wait_delay

MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1763800000
ID = "chatcmpl-CZfake0123456789"
API_KEY = "sk-test-123"
AZURE_KEY = "azure-key-456"
AZURE_API_VERSION = "2024-10-21"
FILTER_OK = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}


def _finish(behavior: Behavior) -> str:
    reply = behavior.reply
    return reply.stop or ("tool_calls" if reply.tool_calls else "stop")


def _usage(behavior: Behavior) -> dict[str, Any]:
    r = behavior.reply
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _call_id(i: int) -> str:
    return f"call_fake{i:04d}"


def completion(behavior: Behavior, model: str, *, azure: bool = False) -> dict[str, Any]:
    reply = behavior.reply
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text or None,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": _call_id(i),
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for i, c in enumerate(reply.tool_calls)
        ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": _finish(behavior),
    }
    out: dict[str, Any] = {
        "id": ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [choice],
        "usage": _usage(behavior),
        "service_tier": "default",
        "system_fingerprint": "fp_fake01",
    }
    if azure:
        choice["content_filter_results"] = FILTER_OK
        out["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": FILTER_OK}]
    ChatCompletion.model_validate(out)
    return out


def chunks(
    behavior: Behavior, model: str, *, include_usage: bool, azure: bool = False
) -> list[dict[str, Any]]:
    reply = behavior.reply
    base = {
        "id": ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_fake01",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None  # OpenAI sends an explicit null on every chunk but the last
        return out

    out: list[dict[str, Any]] = []
    if azure:
        # Azure opens with the prompt filter results in a chunk that has no choices
        out.append(
            {
                **base,
                "id": "",
                "model": "",
                "created": 0,
                "object": "",
                "choices": [],
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTER_OK}],
            }
        )
    text = reply.text
    opening = {"role": "assistant", "content": "", "refusal": None}
    if text or not reply.tool_calls:
        out.append(chunk(opening))
    for i in range(0, len(text), 4):
        out.append(chunk({"content": text[i : i + 4]}))
    for i, call in enumerate(reply.tool_calls):
        start = {
            "index": i,
            "id": _call_id(i),
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        if i == 0 and not text:
            # a streamed tool call opens with the role, content null and the call in one chunk
            out.append(chunk({**opening, "content": None, "tool_calls": [start]}))
        else:
            out.append(chunk({"tool_calls": [start]}))
        arguments = json.dumps(call.arguments)
        for j in range(0, len(arguments), 6):
            out.append(
                chunk(
                    {"tool_calls": [{"index": i, "function": {"arguments": arguments[j : j + 6]}}]}
                )
            )
    out.append(chunk({}, _finish(behavior)))
    if include_usage:
        out.append({**base, "choices": [], "usage": _usage(behavior)})
    for item in out:
        if item["object"]:
            ChatCompletionChunk.model_validate(item)
    return out


def legacy_completion(completion_: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's answer to a request with ``functions``: one ``function_call``."""
    [choice] = completion_["choices"]
    message = choice["message"]
    calls = message.pop("tool_calls", None)
    if calls:
        message["function_call"] = calls[0]["function"]
        choice["finish_reason"] = "function_call"
    ChatCompletion.model_validate(completion_)
    return completion_


def legacy_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    """A chunk of OpenAI's stream for ``functions``: ``delta.function_call`` (name first)."""
    for choice in chunk["choices"]:
        delta = choice["delta"]
        calls = delta.pop("tool_calls", None)
        if calls and calls[0]["index"] == 0:
            delta["function_call"] = calls[0]["function"]
        if choice["finish_reason"] == "tool_calls":
            choice["finish_reason"] = "function_call"
    return chunk


def sse(chunks_: list[dict[str, Any]], behavior: Behavior) -> bytes:
    events = [f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks_]
    if behavior.malformed:
        events.insert(2, 'data: {"id": "chatcmpl-x", "choices": [{"delta": \n\n')
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


def error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("invalid_request_error", "unsupported_country_region_territory"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }
    kind, code = kinds.get(status, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def azure_error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": str(status), "message": message}}


def embeddings(behavior: Behavior, body: dict[str, Any]) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    vectors = behavior.embeddings[: len(inputs)]
    out: dict[str, Any] = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
        ],
        "model": body["model"],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    CreateEmbeddingResponse.model_validate(out)
    if body.get("encoding_format") == "base64":
        for item in out["data"]:
            raw = struct.pack(f"<{len(item['embedding'])}f", *item["embedding"])
            item["embedding"] = base64.b64encode(raw).decode()
    return out


def make_app(behavior: Behavior, *, azure: bool = False) -> Starlette:
    def error(status: int, message: str, retry_after: str | None = None) -> Response:
        headers = {"retry-after": retry_after} if retry_after else {}
        body = azure_error_body(status, message) if azure else error_body(status, message)
        return JSONResponse(body, status_code=status, headers=headers)

    async def record(request: Request) -> tuple[dict[str, Any], Response | None]:
        body: dict[str, Any] = await request.json() if request.method == "POST" else {}
        behavior.requests.append(
            {
                "path": request.url.path,
                "query": dict(request.query_params),
                "headers": dict(request.headers),
                "json": body,
                "client": request.client.port if request.client else None,
            }
        )
        if azure:
            if (
                request.headers.get("api-key") != AZURE_KEY
                and request.headers.get("authorization") != f"Bearer {AZURE_KEY}"
            ):
                return body, error(
                    401,
                    "Access denied due to invalid subscription key or wrong API endpoint.",
                )
            if request.query_params.get("api-version") != AZURE_API_VERSION:
                return body, error(404, "Resource not found")
        elif request.headers.get("authorization") != f"Bearer {API_KEY}":
            return body, error(401, "Incorrect API key provided.")
        if behavior.delay:
            await wait_delay(behavior)
        if behavior.status:
            return body, error(behavior.status, behavior.error_message, behavior.retry_after)
        return body, None

    async def chat(request: Request) -> Response:
        body, failure = await record(request)
        if failure is not None:
            return failure
        model = request.path_params.get("deployment") or body.get("model", MODEL)
        if azure:
            model = MODEL  # Azure answers with the underlying model name, not the deployment
        # the deprecated functions: OpenAI answers with function_call, not tool_calls
        legacy = body.get("functions") is not None
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            out = chunks(behavior, model, include_usage=include_usage, azure=azure)
            payload = sse([legacy_chunk(c) for c in out] if legacy else out, behavior)
            if behavior.pause_after_first:
                return StreamingResponse(paused(payload, behavior), media_type="text/event-stream")
            return StreamingResponse(body_slices(payload, behavior), media_type="text/event-stream")
        if behavior.malformed:
            return Response(b'{"id": "chatcmpl-x", "choices": [', media_type="application/json")
        answer = completion(behavior, model, azure=azure)
        return JSONResponse(legacy_completion(answer) if legacy else answer)

    async def embed(request: Request) -> Response:
        body, failure = await record(request)
        if failure is not None:
            return failure
        return JSONResponse(embeddings(behavior, body))

    async def models(request: Request) -> Response:
        _, failure = await record(request)
        if failure is not None:
            return failure
        data = [
            {"id": i, "object": "model", "created": CREATED, "owned_by": owner}
            for i, owner in (
                ("gpt-4o-mini", "system"),
                ("text-embedding-3-small", "system"),
                ("ft:gpt-4o-mini:acme::abc", "acme"),
            )
        ]
        for item in data:
            Model.model_validate(item)
        return JSONResponse({"object": "list", "data": data})

    if azure:
        prefix = "/openai/deployments/{deployment}"
        routes = [
            Route(f"{prefix}/chat/completions", chat, methods=["POST"]),
            Route(f"{prefix}/embeddings", embed, methods=["POST"]),
        ]
    else:
        routes = [
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/embeddings", embed, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    return Starlette(routes=routes)


async def paused(payload: bytes, behavior: Behavior) -> AsyncIterator[bytes]:
    """The stream's first event, a pause, then the rest (a slow first token)."""
    head, sep, rest = payload.partition(b"\n\n")
    yield head + sep
    await asyncio.sleep(behavior.pause_after_first)
    async for piece in body_slices(rest, behavior):
        yield piece
