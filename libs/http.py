"""HTTP client factory for service-to-service calls (httpx: JSON helpers, test transports).

Timeouts always; retries only for idempotent methods (and only on connection failures or
502/503/504), so a POST is never sent twice. Request id and trace context ride along. The
request path's own pooled client (the gateway's proxy, the llm's vendor calls) is
:mod:`libs.transport`.
"""

from __future__ import annotations

import asyncio
import logging
import random

import httpx

from libs.context import get_request_id
from libs.telemetry import inject_trace_headers

log = logging.getLogger("aistack.http")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})


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
