"""libs.sse: the one SSE response class (headers, an ASGI message per event, a client that
leaves cancels and closes the source even while it is silent)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.types import Message

from libs.sse import SSEResponse, data_frame, event_frame

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"spec_version": "2.4"}}


def test_frames() -> None:
    assert data_frame({"a": 1}) == b'data: {"a":1}\n\n'
    assert event_frame("end", {"id": "j"}) == b'event: end\ndata: {"id":"j"}\n\n'
    assert orjson.loads(event_frame("x", [1]).split(b"data: ")[1]) == [1]


async def test_headers_and_one_message_per_event() -> None:
    sent: list[Message] = []
    done = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    async def receive() -> Message:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    response = SSEResponse(events(), headers={"x-aistack-provider": "p"})
    await response(SCOPE, receive, send)
    start, *bodies = sent
    assert start["status"] == 200
    assert start["headers"] == [
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        (b"x-aistack-provider", b"p"),
        (b"content-type", b"text/event-stream; charset=utf-8"),
    ]
    assert [b["body"] for b in bodies] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert SSEResponse(events()).headers["cache-control"] == "no-cache"


async def test_a_client_leaving_closes_a_silent_source() -> None:
    started, closed = asyncio.Event(), asyncio.Event()
    left = asyncio.Event()

    async def silent() -> AsyncIterator[bytes]:
        try:
            yield b"data: first\n\n"
            started.set()
            await asyncio.sleep(3600)  # an upstream between chunks
            yield b"data: never\n\n"
        finally:
            closed.set()

    async def receive() -> Message:
        await left.wait()
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    task = asyncio.create_task(SSEResponse(silent())(SCOPE, receive, send))
    await asyncio.wait_for(started.wait(), 5)
    left.set()
    await asyncio.wait_for(task, 5)
    assert closed.is_set()
    assert [m.get("body") for m in sent[1:]] == [b"data: first\n\n"]
