"""A fake Ollama server (/api/chat NDJSON, /api/embed, /api/tags) speaking the exact wire
format; payloads are validated with the official ``ollama`` client's response types."""

from __future__ import annotations

import json
from typing import Any

import ollama
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.fakes.vendor_common import Behavior, body_slices, wait_delay

MODEL = "llama3.2:3b"
CREATED = "2026-11-22T09:00:00.000000Z"


def _final(behavior: Behavior, model: str) -> dict[str, Any]:
    r = behavior.reply
    return {
        "model": model,
        "created_at": CREATED,
        "done": True,
        "done_reason": r.stop or "stop",
        "total_duration": 1000,
        "load_duration": 10,
        "prompt_eval_count": r.prompt_tokens,
        "prompt_eval_duration": 100,
        "eval_count": r.completion_tokens,
        "eval_duration": 800,
    }


def _tool_calls(behavior: Behavior) -> list[dict[str, Any]]:
    return [
        {"function": {"name": c.name, "arguments": c.arguments}} for c in behavior.reply.tool_calls
    ]


def response(behavior: Behavior, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": behavior.reply.text}
    if behavior.reply.tool_calls:
        message["tool_calls"] = _tool_calls(behavior)
    out = {**_final(behavior, model), "message": message}
    ollama.ChatResponse.model_validate(out)
    return out


def lines(behavior: Behavior, model: str) -> list[dict[str, Any]]:
    text = behavior.reply.text
    out: list[dict[str, Any]] = []
    for i in range(0, len(text), 5):
        out.append(
            {
                "model": model,
                "created_at": CREATED,
                "message": {"role": "assistant", "content": text[i : i + 5]},
                "done": False,
            }
        )
    if behavior.reply.tool_calls:
        # Ollama sends tool calls whole, in one line of their own
        out.append(
            {
                "model": model,
                "created_at": CREATED,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": _tool_calls(behavior),
                },
                "done": False,
            }
        )
    out.append({**_final(behavior, model), "message": {"role": "assistant", "content": ""}})
    for line in out:
        ollama.ChatResponse.model_validate(line)
    return out


def ndjson(lines_: list[dict[str, Any]], behavior: Behavior) -> bytes:
    rows = [json.dumps(line) + "\n" for line in lines_]
    if behavior.malformed:
        rows.insert(1, '{"model": "x", "message": {\n')
    return "".join(rows).encode()


def make_app(behavior: Behavior) -> Starlette:
    async def record(request: Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json() if request.method == "POST" else {}
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
        return body

    def error() -> Response:
        headers = {"retry-after": behavior.retry_after} if behavior.retry_after else {}
        return JSONResponse(
            {"error": behavior.error_message}, status_code=behavior.status or 500, headers=headers
        )

    async def chat(request: Request) -> Response:
        body = await record(request)
        if behavior.status:
            return error()
        model = body.get("model", MODEL)
        if body.get("stream", True):
            return StreamingResponse(
                body_slices(ndjson(lines(behavior, model), behavior), behavior),
                media_type="application/x-ndjson",
            )
        if behavior.malformed:
            return Response(b'{"model": "x", "message": {', media_type="application/json")
        return JSONResponse(response(behavior, model))

    async def embed(request: Request) -> Response:
        body = await record(request)
        if behavior.status:
            return error()
        out = {
            "model": body["model"],
            "embeddings": behavior.embeddings[: len(body["input"])],
            "total_duration": 1000,
            "load_duration": 10,
            "prompt_eval_count": 4,
        }
        ollama.EmbedResponse.model_validate(out)
        return JSONResponse(out)

    async def tags(request: Request) -> Response:
        await record(request)
        if behavior.status:
            return error()
        out = {
            "models": [
                {
                    "name": MODEL,
                    "model": MODEL,
                    "modified_at": CREATED,
                    "size": 2019393189,
                    "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "llama",
                        "families": ["llama"],
                        "parameter_size": "3.2B",
                        "quantization_level": "Q4_K_M",
                    },
                }
            ]
        }
        ollama.ListResponse.model_validate(out)
        return JSONResponse(out)

    return Starlette(
        routes=[
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/embed", embed, methods=["POST"]),
            Route("/api/tags", tags, methods=["GET"]),
        ]
    )
