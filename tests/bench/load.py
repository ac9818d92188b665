"""A small closed-loop load generator: N concurrent clients, each sending back to back.

It shares two cores with the processes it measures, so it spends as little CPU per request as
it can: each client keeps one HTTP/1.1 keep-alive connection, sends the same request bytes
(encoded once) and parses the answer with httptools (the parser uvicorn uses), on uvloop. That
is ~10x less CPU per request than aiohttp's client, which it replaced (see docs/benchmarks.md):
CPU the generator does not take is CPU the measured processes get, on both sides of a
comparison (LiteLLM is measured with the same generator).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop


@dataclass
class Result:
    """Throughput and latency of one run."""

    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    # CPU time per measured request, in ms, by process (when a probe was given)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The q-th percentile latency in milliseconds (q in 0..100)."""
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        k = max(0, min(len(data) - 1, round(q / 100 * (len(data) - 1))))
        return data[k]

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan")


Check = Callable[[int, bytes], bool]


def _ok(status: int, body: bytes) -> bool:
    return status == 200


def encode_request(
    url: str, method: str = "GET", json: Any = None, headers: dict[str, str] | None = None
) -> tuple[str, int, bytes]:
    """``(host, port, request bytes)`` of one HTTP/1.1 keep-alive request."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the load generator speaks plain http to a host: {url}")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    body = b"" if json is None else orjson.dumps(json)
    lines = [f"{method} {path} HTTP/1.1", f"host: {parts.hostname}:{port}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if json is not None:
        lines.append("content-type: application/json")
    if body or method not in ("GET", "HEAD"):
        lines.append(f"content-length: {len(body)}")
    return parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; :meth:`request` sends the bytes and waits for one answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as every HTTP client: the request leaves at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        keep = self.parser.should_keep_alive()
        body = b"".join(self.body)
        self.body = []
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body, keep))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        status, body, keep = await self.waiter
        if not keep:
            self.transport.close()
            self.closed = True
        return status, body


async def run(
    name: str,
    url: str,
    *,
    method: str = "GET",
    json: Any = None,
    headers: dict[str, str] | None = None,
    concurrency: int = 1,
    duration: float = 5.0,
    warmup: float = 1.0,
    check: Check = _ok,
    cpu_probe: Callable[[], dict[str, float]] | None = None,
) -> Result:
    """Send requests from ``concurrency`` clients for ``duration`` seconds after a warm-up.

    ``cpu_probe`` returns CPU seconds used so far by each process of interest; read at the
    start and end of the measured window, it gives CPU time per request.
    """
    return await _in_uvloop(
        _run(name, url, method, json, headers, concurrency, duration, warmup, check, cpu_probe)
    )


async def _in_uvloop(coro: Any) -> Result:
    """Run on uvloop even when the caller's loop is asyncio's (in a thread of its own)."""
    if isinstance(asyncio.get_running_loop(), uvloop.Loop):
        result: Result = await coro
        return result
    return await asyncio.to_thread(uvloop.run, coro)


async def _run(
    name: str,
    url: str,
    method: str,
    json: Any,
    headers: dict[str, str] | None,
    concurrency: int,
    duration: float,
    warmup: float,
    check: Check,
    cpu_probe: Callable[[], dict[str, float]] | None,
) -> Result:
    host, port, data = encode_request(url, method, json, headers)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    count = 0
    measuring = False
    stop_at = 0.0
    began = float("inf")
    perf = time.perf_counter

    async def client() -> None:
        nonlocal errors, count
        conn: _Connection | None = None
        while True:
            start = perf()
            if measuring and start >= stop_at:
                break
            try:
                if conn is None or conn.closed:
                    _, conn = await loop.create_connection(_Connection, host, port)
                status, body = await conn.request(data)
                good = check(status, body)
            except (OSError, httptools.HttpParserError):
                conn = None
                good = False
            elapsed = (perf() - start) * 1000
            if measuring:
                count += 1
                if not good:
                    errors += 1
                elif start >= began:
                    # latencies of requests sent in the window only: one sent during the
                    # warm-up (a cold start's connection storm) is not this window's
                    latencies.append(elapsed)
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    cpu_before = cpu_probe() if cpu_probe else {}
    measuring = True
    began = perf()
    stop_at = began + duration
    # a request that never comes back (a hung server) ends the run, as an error each
    done, hung = await asyncio.wait(tasks, timeout=duration + 60)
    for task in hung:
        task.cancel()
        errors += 1
    for task in done:
        task.result()  # a bug in the generator is not a measurement
    took = perf() - began
    cpu_after = cpu_probe() if cpu_probe else {}
    cpu_ms = {
        name: 1000 * (cpu_after[name] - cpu_before[name]) / max(count, 1) for name in cpu_after
    }
    return Result(name, concurrency, count, errors, took, latencies, cpu_ms)
