"""An httpx transport that sends over aiohttp's connection pool.

The adapters speak httpx (requests, responses, errors, test transports); only the pool
underneath changes. httpx's own pool (httpcore) checks every pooled connection on each
request, so its cost grows with concurrency: with 16 requests in flight it was the largest
single cost of a chat call in the llm service (see docs/benchmarks.md). aiohttp's pool hands
out an idle connection in constant time.

Bodies are passed through undecoded (httpx decodes ``content-encoding`` itself) and aiohttp
errors become the httpx errors the adapters already classify (timeouts, connect failures,
broken streams).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import yarl

_TIMEOUTS: dict[tuple[float | None, float | None, float | None], aiohttp.ClientTimeout] = {}


def _timeout(extensions: dict[str, Any]) -> aiohttp.ClientTimeout:
    t = extensions.get("timeout") or {}
    connect, read, pool = t.get("connect"), t.get("read"), t.get("pool")
    key = (connect, read, pool)
    timeout = _TIMEOUTS.get(key)
    if timeout is None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None else connect + (pool or 0.0),
            sock_connect=connect,
            sock_read=read,
        )
        if len(_TIMEOUTS) < 64:
            _TIMEOUTS[key] = timeout
    return timeout


def _map_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc) or "connect timed out", request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(str(exc) or "read timed out", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc), request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request)
    return httpx.ReadError(str(exc) or type(exc).__name__, request=request)


_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


class _Body(httpx.AsyncByteStream):
    def __init__(self, resp: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self.resp = resp
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.resp.content.iter_any():
                yield chunk
        except _ERRORS as exc:
            raise _map_error(exc, self.request) from exc

    async def read_all(self) -> bytes:
        """The whole body in one piece (aiohttp's own buffer, no chunk list to join)."""
        try:
            return await self.resp.read()
        except _ERRORS as exc:
            raise _map_error(exc, self.request) from exc

    async def aclose(self) -> None:
        # a fully read response returns its connection to the pool; a half-read one is dropped
        if self.resp.content.at_eof():
            self.resp.release()
        else:
            self.resp.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx transport over one aiohttp ``ClientSession`` (created on first use, in the loop)."""

    def __init__(self, *, max_connections: int = 200, keepalive_expiry: float = 30.0) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections,
                    limit_per_host=0,
                    keepalive_timeout=self.keepalive_expiry,
                    ttl_dns_cache=300,
                ),
                auto_decompress=False,
                # httpx already set every header it wants
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._session = session
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._get_session()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        body = await request.aread()
        try:
            resp = await session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                compress=None,
                timeout=_timeout(request.extensions),
            )
        except _ERRORS as exc:
            raise _map_error(exc, request) from exc
        return httpx.Response(
            resp.status,
            headers=resp.raw_headers,
            stream=_Body(resp, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (resp.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
