"""A fast fake OpenAI upstream for benchmarks: canned answers in OpenAI's wire format.

It stands in for a vendor on another machine, yet shares this one's two cores with what is
measured, so it costs as little CPU as it can: ``python -m tests.bench.fake_openai --port 9100``
serves HTTP/1.1 from an asyncio protocol (httptools parser, uvloop, canned bytes; what the
benchmarks run), and ``app`` is the same answers as a bare ASGI callable for uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from typing import Any, cast

import httptools
import orjson
import uvloop

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

# one input's embedding (the soak sends one text per request)
_EMBEDDINGS = orjson.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0625] * 256}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
)

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
    if scope["path"].endswith("/embeddings"):
        await _send(send, 200, b"application/json", _EMBEDDINGS)
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


# ------------------------------------------------------------------------- the raw server


def _head(ctype: bytes, length: int | None) -> bytes:
    size = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"HTTP/1.1 200 OK\r\ncontent-type: " + ctype + b"\r\n" + size + b"\r\n\r\n"


# head and body in separate writes, as uvicorn sends them (and as the vendors' servers do)
_COMPLETION_ANSWER = (_head(b"application/json", len(_COMPLETION)), _COMPLETION)
_MODELS_ANSWER = (_head(b"application/json", len(_MODELS)), _MODELS)
_EMBEDDINGS_ANSWER = (_head(b"application/json", len(_EMBEDDINGS)), _EMBEDDINGS)
_STREAM_HEAD = _head(b"text/event-stream", None)
_STREAM_CHUNKS = [b"%x\r\n" % len(e) + e + b"\r\n" for e in _EVENTS] + [b"0\r\n\r\n"]


class _Upstream(asyncio.Protocol):
    """One client connection: keep-alive HTTP/1.1, one answer per request."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as uvicorn: small writes (stream events) leave at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        assert transport is not None
        url, body = self.url, b"".join(self.body)
        self.url, self.body = b"", []
        path = url.split(b"?", 1)[0]
        if path.endswith(b"/models"):
            for part in _MODELS_ANSWER:
                transport.write(part)
        elif path.endswith(b"/embeddings"):
            for part in _EMBEDDINGS_ANSWER:
                transport.write(part)
        elif b'"stream":true' in body.replace(b" ", b""):
            transport.write(_STREAM_HEAD)
            for chunk in _STREAM_CHUNKS:  # one write per event, as a real upstream streams them
                transport.write(chunk)
        else:
            for part in _COMPLETION_ANSWER:
                transport.write(part)
        if not self.parser.should_keep_alive():
            transport.close()


async def serve(port: int, host: str = "127.0.0.1") -> None:
    server = await asyncio.get_running_loop().create_server(
        _Upstream, host, port, backlog=2048, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fake_openai")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.host))


if __name__ == "__main__":
    main()
