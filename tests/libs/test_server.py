"""The apps' HTTP protocol: a sized answer leaves in one write, streams open at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.server import HttpProtocol
from tests.support.servers import serve

WRITES: list[bytes] = []


class _Recording:
    """The connection's real transport, recording every write."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class RecordingProtocol(HttpProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Recording(transport))  # type: ignore[arg-type]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    if path == "/json":
        body = b'{"ok": true}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"12")],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await asyncio.sleep(0.05)
        for i in range(3):
            await send(
                {"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})
    elif path == "/broken":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
        )
        raise RuntimeError("the app fails after starting its answer")


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    running = await serve(app, http=RecordingProtocol)
    yield running.url
    await running.stop()


async def test_a_sized_answer_is_one_write(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        for _ in range(3):  # keep-alive: every answer on the connection
            WRITES.clear()
            resp = await client.get("/json")
            assert resp.status_code == 200 and resp.json() == {"ok": True}
            assert len(WRITES) == 1
            assert WRITES[0].startswith(b"HTTP/1.1 200 OK\r\n")
            assert WRITES[0].endswith(b'\r\n\r\n{"ok": true}')
        WRITES.clear()
        resp = await client.head("/json")
        assert resp.status_code == 200 and resp.headers["content-length"] == "12"
        assert resp.content == b"" and len(WRITES) == 1
        resp = await client.get("/empty")
        assert resp.status_code == 204 and resp.content == b""


async def test_a_stream_opens_before_its_first_event(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        WRITES.clear()
        async with client.stream("GET", "/stream") as resp:
            # the headers arrived while the app was still waiting for its first event
            assert resp.status_code == 200
            assert len(WRITES) == 1 and WRITES[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
            body = b"".join([chunk async for chunk in resp.aiter_bytes()])
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert len(WRITES) == 5  # headers, three events, the last chunk


async def test_an_answer_cut_short_closes_the_connection(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        WRITES.clear()
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/broken")
        # the held headers were still sent before the close: the client saw a cut answer
        assert len(WRITES) == 1 and b"content-length: 5" in WRITES[0]
        # the server keeps serving
        assert (await client.get("/json")).json() == {"ok": True}
