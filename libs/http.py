"""HTTP client factory for service-to-service calls.

Timeouts always; retries only for idempotent methods (and only on connection failures or
502/503/504), so a POST is never sent twice. Request id and trace context ride along.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx

from libs.context import get_request_id
from libs.telemetry import inject_trace_headers

log = logging.getLogger("aistack.http")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})


def failed_while_connecting(exc: BaseException) -> bool:
    """Did this pyreqwest error happen while connecting (not while waiting for an answer)?

    pyreqwest 0.15 raises ``ConnectTimeoutError`` for a read timeout before the response's
    head too; only the cause chain tells them apart: hyper's "client error (Connect)" is in
    it when connecting failed.
    """
    details = getattr(exc, "details", None) or {}
    return any("(Connect)" in c.get("message", "") for c in details.get("causes") or ())


def pyreqwest_client(
    *,
    max_connections: int,
    connect_timeout: float,
    read_timeout: float,
    keepalive_s: float = 30.0,
    pool_timeout: float | None = None,
    max_idle_per_host: int | None = None,
    internal: bool = False,
) -> Any:
    """A pyreqwest client that passes bodies through as they are (no decompression, no
    redirects). ``read_timeout`` bounds each wait for bytes, as aiohttp's ``sock_read``.
    ``internal``: service-to-service (HTTP/1.1 only, no proxy from the environment).
    """
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder

    builder = (
        ClientBuilder()
        .max_connections(max_connections)
        .pool_idle_timeout(timedelta(seconds=keepalive_s))
        .connect_timeout(timedelta(seconds=connect_timeout))
        .read_timeout(timedelta(seconds=read_timeout))
        .follow_redirects(False)
        .gzip(False)
        .brotli(False)
        .zstd(False)
        .deflate(False)
        .tcp_nodelay(True)
    )
    if pool_timeout is not None:
        builder = builder.pool_timeout(timedelta(seconds=pool_timeout))
    if max_idle_per_host is not None:
        builder = builder.pool_max_idle_per_host(max_idle_per_host)
    if internal:
        builder = builder.no_proxy().http1_only()
    return builder.build()


async def pyreqwest_open(
    client: Any,
    method: str,
    url: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes | AsyncIterator[bytes] | None,
) -> tuple[Any, Any]:
    """Send a request; (the streamed request, to leave when done; its response, head read)."""
    builder = (
        client.request(method, url)
        .headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers])
        # hand each chunk on as it arrives (the default reads up to 64 KiB ahead first)
        .streamed_read_buffer_limit(1)
    )
    if isinstance(body, bytes):
        if body:
            builder = builder.body_bytes(body)
    elif body is not None:
        builder = builder.body_stream(body)
    streamed = builder.build_streamed()
    return streamed, await streamed.__aenter__()


class RetryingTransport(httpx.AsyncBaseTransport):
    """Retries idempotent requests with jittered exponential backoff."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, retries: int = 2, backoff: float = 0.1
    ) -> None:
        self.inner = inner
        self.retries = retries
        self.backoff = backoff

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attempts = self.retries + 1 if request.method in IDEMPOTENT_METHODS else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self.inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError):
                if last:
                    raise
            else:
                if response.status_code not in RETRY_STATUSES or last:
                    return response
                await response.aclose()
            delay = self.backoff * (2**attempt) * (0.5 + random.random())
            log.warning("retrying %s %s in %.2fs", request.method, request.url, delay)
            await asyncio.sleep(delay)
        raise RuntimeError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _propagate(request: httpx.Request) -> None:
    rid = get_request_id()
    if rid and "x-request-id" not in request.headers:
        request.headers["x-request-id"] = rid
    carrier: dict[str, str] = {}
    inject_trace_headers(carrier)
    for k, v in carrier.items():
        request.headers.setdefault(k, v)


def make_http_client(
    service: str,
    *,
    base_url: str = "",
    timeout: float = 10.0,
    connect_timeout: float = 2.0,
    retries: int = 2,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient for calling other aistack services (or vendors) with sane defaults."""
    inner = transport or httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
    )
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        transport=RetryingTransport(inner, retries=retries),
        headers={"user-agent": f"aistack-{service}"},
        event_hooks={"request": [_propagate]},
    )
