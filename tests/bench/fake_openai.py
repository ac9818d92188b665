"""A fast fake OpenAI upstream for benchmarks: canned answers in OpenAI's wire format.

A bare ASGI callable (no framework) so the upstream costs as little CPU as possible and
the figures measure aistack, not the fake.

    python -m uvicorn tests.bench.fake_openai:app --port 9100
"""

from __future__ import annotations

import time
from typing import Any

import orjson

CHUNKS = 20
_CREATED = int(time.time())

_COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": _CREATED,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    }
)


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": "gpt-4o-mini",
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


_STREAM = b"".join(
    [
        _chunk({"role": "assistant", "content": ""}),
        *(_chunk({"content": f"tok{i} "}) for i in range(CHUNKS - 2)),
        _chunk({}, finish="stop"),
        _chunk({}, usage={"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 32}),
        b"data: [DONE]\n\n",
    ]
)
_EVENTS = [e + b"\n\n" for e in _STREAM.split(b"\n\n") if e]

_MODELS = orjson.dumps(
    {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "bench"}]}
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"].endswith("/models"):
        await _send(send, 200, b"application/json", _MODELS)
        return
    if b'"stream":true' in body.replace(b" ", b""):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        # one write per event, as a real upstream streams them
        for event in _EVENTS:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await _send(send, 200, b"application/json", _COMPLETION)


async def _send(send: Any, status: int, ctype: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
