"""libs.transport against a real server on loopback: answers, bodies, and each failure kind."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from libs import transport
from libs.transport import (
    Broken,
    Client,
    ConnectFailed,
    ConnectTimedOut,
    Origin,
    TimedOut,
    Timeouts,
)

FAST = Timeouts(connect=2.0, read=5.0, write=5.0, pool=2.0)


class _Held:
    """What the app waits on, and what it saw."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.clients: list[tuple[str, int]] = []


async def _start(scope: dict[str, Any], send: Any, status: int = 200, **headers: str) -> None:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})


def make_app(held: _Held) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        held.clients.append(scope["client"])
        path = scope["path"]
        if path == "/json":
            body = b'{"answer": 42}'
            await _start(
                scope,
                send,
                content_type="application/json",
                content_length=str(len(body)),
                x_Mixed="Case",
            )
            await send({"type": "http.response.body", "body": body})
        elif path == "/echo":
            parts = []
            while True:
                message = await receive()
                parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            await _start(scope, send, x_chunked=str(len(parts) > 1).lower())
            await send({"type": "http.response.body", "body": b"".join(parts)})
        elif path == "/stream":
            await _start(scope, send, content_type="text/event-stream")
            await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
            await held.release.wait()
            await send({"type": "http.response.body", "body": b"data: two\n\n"})
        elif path == "/slow":
            await asyncio.sleep(3)
            await _start(scope, send)
            await send({"type": "http.response.body", "body": b"late"})
        elif path == "/stall":
            await _start(scope, send, content_type="text/event-stream")
            await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
            await asyncio.sleep(3)
            await send({"type": "http.response.body", "body": b""})
        elif path == "/truncated":
            # promises a large body, sends a little, then the connection dies
            await _start(scope, send, content_length="100000")
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise RuntimeError("upstream died mid-body")
        elif path == "/never-reads":
            await asyncio.sleep(3)  # the request body stays in the socket buffers
            await _start(scope, send)
            await send({"type": "http.response.body", "body": b""})

    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test runner owns the signal handlers


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[tuple[str, _Held]]:
    """The app above under uvicorn on a free loopback port."""
    held = _Held()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        make_app(held), log_config=None, access_log=False, timeout_graceful_shutdown=1
    )
    running = _Server(config)
    task = asyncio.create_task(running.serve(sockets=[sock]))
    while not running.started:
        if task.done():
            task.result()  # it failed to start: say why
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", held
    running.should_exit = True
    await task


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client(FAST)
    yield c
    await c.aclose()


async def test_a_whole_answer(server: tuple[str, _Held], client: Client) -> None:
    url, _ = server
    resp = await client.send("GET", f"{url}/json", [(b"accept", b"application/json")])
    assert resp.status == 200
    assert resp.content_length == len(b'{"answer": 42}')
    assert (b"x-mixed", b"Case") in resp.headers  # names lower-cased, values as sent
    assert await resp.read() == b'{"answer": 42}'
    await resp.close()


async def test_a_streamed_answer_is_handed_on_chunk_by_chunk(
    server: tuple[str, _Held], client: Client
) -> None:
    url, held = server
    held.release.clear()
    resp = await client.send("GET", f"{url}/stream", [])
    chunks = resp.chunks()
    # the server holds the rest back until released: the first chunk must arrive alone
    assert await asyncio.wait_for(anext(chunks), 5) == b"data: one\n\n"
    held.release.set()
    assert b"".join([c async for c in chunks]) == b"data: two\n\n"
    await resp.close()


async def test_a_request_body_from_an_async_iterator(
    server: tuple[str, _Held], client: Client
) -> None:
    url, _ = server

    async def body() -> AsyncIterator[bytes]:
        for i in range(5):
            await asyncio.sleep(0.01)  # arrives over time, as a client's upload does
            yield b"part %d;" % i

    resp = await client.send("POST", f"{url}/echo", [], body())
    assert await resp.read() == b"part 0;part 1;part 2;part 3;part 4;"
    assert (b"x-chunked", b"true") in resp.headers
    await resp.close()


async def test_connections_are_kept_alive(server: tuple[str, _Held], client: Client) -> None:
    url, held = server
    before = len(held.clients)
    for _ in range(3):
        resp = await client.send("GET", f"{url}/json", [])
        await resp.read()
        await resp.close()
    assert len(set(held.clients[before:])) == 1


async def test_connect_refused(client: Client) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(ConnectFailed) as info:
        await client.send("GET", f"http://127.0.0.1:{port}/", [])
    assert not isinstance(info.value, TimedOut)


async def test_timeout_before_the_answer(server: tuple[str, _Held]) -> None:
    url, _ = server
    c = Client(Timeouts(connect=2.0, read=0.3, write=5.0, pool=2.0))
    started = time.monotonic()
    with pytest.raises(TimedOut) as info:
        await c.send("GET", f"{url}/slow", [])
    await c.aclose()
    assert not isinstance(info.value, ConnectFailed)  # connected: the gateway's 504, not 503
    assert time.monotonic() - started < 2


async def test_a_stream_going_silent_times_out(server: tuple[str, _Held]) -> None:
    url, _ = server
    c = Client(Timeouts(connect=2.0, read=0.3, write=5.0, pool=2.0))
    resp = await c.send("GET", f"{url}/stall", [])
    chunks = resp.chunks()
    assert await anext(chunks) == b"data: one\n\n"
    with pytest.raises(TimedOut):
        await anext(chunks)
    await resp.close()
    await c.aclose()


@pytest.mark.parametrize("whole", [True, False])
async def test_connection_dropped_mid_answer(
    server: tuple[str, _Held], client: Client, whole: bool
) -> None:
    url, _ = server
    resp = await client.send("GET", f"{url}/truncated", [])
    assert resp.status == 200
    with pytest.raises(Broken):
        if whole:
            await resp.read()
        else:
            async for _ in resp.chunks():
                pass
    await resp.close()
    # the pool is fine afterwards
    again = await client.send("GET", f"{url}/json", [])
    assert await again.read() == b'{"answer": 42}'
    await again.close()


async def test_an_upload_the_upstream_does_not_take_times_out(
    server: tuple[str, _Held],
) -> None:
    url, _ = server
    c = Client(Timeouts(connect=2.0, read=30.0, write=0.3, pool=2.0))
    chunk = b"x" * 65536

    async def body() -> AsyncIterator[bytes]:
        for _ in range(2048):  # 128 MiB: far more than the socket buffers hold
            yield chunk

    started = time.monotonic()
    with pytest.raises(TimedOut):
        resp = await c.send("POST", f"{url}/never-reads", [], body())
        await resp.read()
    await c.aclose()
    assert time.monotonic() - started < 2.5


async def test_waiting_for_a_pooled_connection_times_out(server: tuple[str, _Held]) -> None:
    url, held = server
    held.release.clear()
    # aiohttp bounds the wait and the connecting together: connect + pool
    c = Client(Timeouts(connect=0.3, read=5.0, write=5.0, pool=0.2), max_connections=1)
    busy = await c.send("GET", f"{url}/stream", [])  # holds the only connection
    with pytest.raises(ConnectTimedOut) as info:
        await c.send("GET", f"{url}/json", [])
    # both kinds at once: no connection (the gateway's 503), and a timeout (a provider's 504)
    assert isinstance(info.value, ConnectFailed) and isinstance(info.value, TimedOut)
    held.release.set()
    await busy.close()
    await c.aclose()


def test_failures_are_transport_errors() -> None:
    for kind in (ConnectFailed, TimedOut, ConnectTimedOut, Broken):
        assert issubclass(kind, transport.TransportError)
        # never a builtin TimeoutError: asyncio.timeout() blocks around a call must not eat them
        assert not issubclass(kind, TimeoutError)


# --- Origin: whole requests to one origin (a batch's lines)


async def test_origin_a_whole_answer(server: tuple[str, _Held]) -> None:
    url, _ = server
    origin = Origin(url, FAST)
    answer = await origin.post("/echo", [(b"x-one", b"1")], b'{"q": "hello"}')
    assert answer.status == 200
    assert answer.body == b'{"q": "hello"}'
    answer = await origin.post("/json", [], b"")
    assert answer.body == b'{"answer": 42}'
    assert answer.header(b"x-mixed") == b"Case"  # names lower-cased, values as sent
    assert answer.header(b"content-type") == b"application/json"
    await origin.aclose()


async def test_origin_keeps_connections_alive_but_not_idle_ones(server: tuple[str, _Held]) -> None:
    url, held = server
    origin = Origin(url, FAST, idle_s=0.2)
    before = len(held.clients)
    for _ in range(3):
        assert (await origin.post("/json", [], b"")).status == 200
    assert len(set(held.clients[before:])) == 1
    await asyncio.sleep(0.3)  # idle past idle_s: the server may be closing it, not reused
    assert (await origin.post("/json", [], b"")).status == 200
    assert len(set(held.clients[before:])) == 2
    await origin.aclose()


async def test_origin_connect_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ConnectFailed) as info:
        await Origin(f"http://127.0.0.1:{port}", FAST).post("/", [], b"")
    assert not isinstance(info.value, TimedOut)


async def test_origin_timeout_and_a_dropped_answer(server: tuple[str, _Held]) -> None:
    url, _ = server
    origin = Origin(url, Timeouts(connect=2.0, read=0.3, write=5.0, pool=2.0))
    with pytest.raises(TimedOut) as info:
        await origin.post("/slow", [], b"")
    assert not isinstance(info.value, ConnectFailed)  # sent: it may have run
    with pytest.raises(Broken):
        await origin.post("/truncated", [], b"")
    # the broken connections were dropped: the next request gets a sound one
    assert (await origin.post("/json", [], b"")).body == b'{"answer": 42}'
    await origin.aclose()


async def test_origin_a_cancelled_request_leaves_no_half_read_connection(
    server: tuple[str, _Held],
) -> None:
    url, _ = server
    origin = Origin(url, FAST, max_connections=1)
    task = asyncio.create_task(origin.post("/slow", [], b""))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the only slot is free again, and its answer is not the slow one's
    assert (await origin.post("/json", [], b"")).body == b'{"answer": 42}'
    await origin.aclose()


def test_origin_speaks_http_and_https_only() -> None:
    assert Origin("https://llm.internal", FAST).port == 443
    assert Origin("http://llm.internal", FAST).port == 80
    with pytest.raises(ValueError):
        Origin("ftp://llm.internal", FAST)


async def test_origin_over_https(tmp_path: Path) -> None:
    """A self-signed certificate for 127.0.0.1, trusted by the client's context only."""
    key = ec.generate_private_key(ec.SECP256R1())
    loopback = ip_address("127.0.0.1")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(loopback)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    held = _Held()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        make_app(held),
        log_config=None,
        access_log=False,
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
    )
    running = _Server(config)
    task = asyncio.create_task(running.serve(sockets=[sock]))
    while not running.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    url = f"https://127.0.0.1:{sock.getsockname()[1]}"
    try:
        trusted = ssl.create_default_context(cafile=str(cert_file))
        origin = Origin(url, FAST, tls=trusted)
        assert (await origin.post("/echo", [], b"over tls")).body == b"over tls"
        await origin.aclose()
        # the system's trust store does not know the certificate: nothing is sent
        with pytest.raises(ConnectFailed):
            await Origin(url, FAST).post("/echo", [], b"x")
    finally:
        running.should_exit = True
        await task
