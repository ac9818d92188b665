"""A fake Gemini API (generateContent, streamGenerateContent?alt=sse, batchEmbedContents,
models) speaking the exact wire format; responses are validated with ``google.genai``
types (which forbid unknown fields) so the fake cannot drift from the real API."""

from __future__ import annotations

import json
import zlib
from typing import Any

from google.genai import types
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.fakes.vendor_common import Behavior, body_slices, wait_delay

MODEL = "gemini-2.5-flash"
SIGNATURE = "Q2lRQlZLaG5fc2lnbmF0dXJl"  # opaque base64, echoed back by clients

MAX_BATCH = 100  # batchEmbedContents refuses more requests than this in one call


def derived_embedding(text: str) -> list[float]:
    """The vector the fake answers for ``text`` when the behaviour sets no embeddings."""
    return [float(zlib.crc32(text.encode()) % 1_000_000), float(len(text))]


STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {"code": status, "message": message, "status": STATUSES.get(status, "UNKNOWN")}
    }


def key_error_body(key: str | None) -> tuple[int, dict[str, Any]]:
    """What Google answers a missing key (403) or a wrong one: 400 INVALID_ARGUMENT with the
    ErrorInfo reason API_KEY_INVALID, not a 401."""
    if not key:
        message = (
            "Method doesn't allow unregistered callers (callers without established identity)."
            " Please use API Key or other form of API consumer identity to call this API."
        )
        return 403, error_body(403, message)
    message = "API key not valid. Please pass a valid API key."
    body = error_body(400, message)
    body["error"]["details"] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": message,
        },
    ]
    return 400, body


def _usage(behavior: Behavior) -> dict[str, Any]:
    r = behavior.reply
    return {
        "promptTokenCount": r.prompt_tokens,
        "candidatesTokenCount": r.completion_tokens,
        "totalTokenCount": r.prompt_tokens + r.completion_tokens,
    }


def _finish(behavior: Behavior) -> str:
    return behavior.reply.stop or "STOP"


def _validate(payload: dict[str, Any]) -> dict[str, Any]:
    types.GenerateContentResponse.model_validate(payload)
    return payload


def response(behavior: Behavior) -> dict[str, Any]:
    reply = behavior.reply
    parts: list[dict[str, Any]] = []
    if reply.text:
        parts.append({"text": reply.text})
    for call in reply.tool_calls:
        parts.append(
            {
                "functionCall": {"name": call.name, "args": call.arguments},
                "thoughtSignature": SIGNATURE,
            }
        )
    return _validate(
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": parts},
                    "finishReason": _finish(behavior),
                    "index": 0,
                }
            ],
            "usageMetadata": _usage(behavior),
            "modelVersion": MODEL,
            "responseId": "resp-fake-1",
        }
    )


def chunks(behavior: Behavior) -> list[dict[str, Any]]:
    reply = behavior.reply
    text = reply.text
    pieces = [text[: len(text) // 2], text[len(text) // 2 :]] if text else []
    out: list[dict[str, Any]] = []
    for piece in pieces:
        out.append(
            {
                "candidates": [
                    {"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}
                ],
                "usageMetadata": {"promptTokenCount": reply.prompt_tokens},
                "modelVersion": MODEL,
                "responseId": "resp-fake-1",
            }
        )
    last_parts: list[dict[str, Any]] = [
        {"functionCall": {"name": c.name, "args": c.arguments}, "thoughtSignature": SIGNATURE}
        for c in reply.tool_calls
    ] or [{"text": ""}]
    out.append(
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": last_parts},
                    "finishReason": _finish(behavior),
                    "index": 0,
                }
            ],
            "usageMetadata": _usage(behavior),
            "modelVersion": MODEL,
            "responseId": "resp-fake-1",
        }
    )
    return [_validate(c) for c in out]


def sse(chunks_: list[dict[str, Any]], behavior: Behavior) -> bytes:
    # Google's SSE frames use CRLF line ends
    frames = [f"data: {json.dumps(c)}\r\n\r\n" for c in chunks_]
    if behavior.malformed:
        frames.insert(1, 'data: {"candidates": [{"content": \r\n\r\n')
    return "".join(frames).encode()


def make_app(behavior: Behavior, *, api_key: str | None = None) -> Starlette:
    """With ``api_key``, requests carrying another ``x-goog-api-key`` (or none) are refused as
    Google refuses them."""

    async def models(request: Request) -> Response:
        rest = request.path_params["rest"]
        body: dict[str, Any] = await request.json() if request.method == "POST" else {}
        behavior.requests.append(
            {
                "path": request.url.path,
                "query": dict(request.query_params),
                "headers": dict(request.headers),
                "json": body,
            }
        )
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if api_key is not None and key != api_key:
            status, error = key_error_body(key)
            return JSONResponse(error, status_code=status)
        if behavior.delay:
            await wait_delay(behavior)
        if behavior.status:
            headers = {"retry-after": behavior.retry_after} if behavior.retry_after else {}
            return JSONResponse(
                error_body(behavior.status, behavior.error_message),
                status_code=behavior.status,
                headers=headers,
            )
        if request.method == "GET":
            return JSONResponse(
                {
                    "models": [
                        {
                            "name": f"models/{MODEL}",
                            "inputTokenLimit": 1048576,
                            "supportedGenerationMethods": ["generateContent"],
                        }
                    ]
                }
            )
        _, _, method = rest.partition(":")
        if method == "generateContent":
            if behavior.malformed:
                return Response(b'{"candidates": [', media_type="application/json")
            return JSONResponse(response(behavior))
        if method == "streamGenerateContent":
            if request.query_params.get("alt") != "sse":
                return JSONResponse(error_body(400, "fake serves alt=sse only"), status_code=400)
            return StreamingResponse(
                body_slices(sse(chunks(behavior), behavior), behavior),
                media_type="text/event-stream",
            )
        if method == "batchEmbedContents":
            requests = body["requests"]
            if len(requests) > MAX_BATCH:
                message = (
                    f"* BatchEmbedContentsRequest.requests: at most {MAX_BATCH} requests can be"
                    " in one batch\n"
                )
                return JSONResponse(error_body(400, message), status_code=400)
            if behavior.embeddings:
                vectors = behavior.embeddings[: len(requests)]
            else:
                vectors = [derived_embedding(r["content"]["parts"][0]["text"]) for r in requests]
            out = {"embeddings": [{"values": v} for v in vectors]}
            types.EmbedContentResponse.model_validate(out)
            return JSONResponse(out)
        return JSONResponse(error_body(404, f"unknown method {method}"), status_code=404)

    return Starlette(routes=[Route("/v1beta/{rest:path}", models, methods=["GET", "POST"])])
