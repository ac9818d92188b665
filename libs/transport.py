"""The HTTP client of the request path: the gateway's proxy and the llm's vendor calls.

One keep-alive pool per client over aiohttp, the fastest backend measured (pyreqwest and
httpx were dropped: docs/benchmarks.md, "One transport layer"). Bytes pass through as they
are (no decompression, redirects or cookies), and every failure is one of three kinds that
each caller turns into its own answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.payload
import yarl

Body = bytes | AsyncIterator[bytes] | None
RawHeaders = list[tuple[bytes, bytes]]


class TransportError(Exception):
    """No complete answer; the subclass says where the exchange stopped."""


class ConnectFailed(TransportError):
    """No connection (refused, unreachable, none free in the pool): nothing was sent."""


class TimedOut(TransportError):
    """Nothing arrived within the read timeout, or the upstream took no body within write."""


class ConnectTimedOut(ConnectFailed, TimedOut):
    """Connecting, or waiting for a pooled connection, took too long (both kinds at once)."""


class Broken(TransportError):
    """The connection broke, or the answer was malformed, after the request went out."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed to ``connect`` a new connection, to wait for a free one from the
    ``pool`` (aiohttp bounds the two together: ``connect + pool``), between two arrivals of
    answer bytes (``read``: a stream may stay silent that long), and for the upstream to take
    one chunk of a streamed request body (``write``)."""

    connect: float
    read: float
    write: float
    pool: float


_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


def _classify(exc: BaseException, upload: _Upload | None) -> TransportError:
    message = str(exc) or type(exc).__name__
    if upload is not None and upload.stalled:
        return TimedOut(f"the upstream took no request body for {upload.timeout}s")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimedOut(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectFailed(message)
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's socket read timeout is one too
        return TimedOut(message)
    return Broken(message)


class _Upload(aiohttp.payload.AsyncIterablePayload):
    """A streamed request body whose every chunk the upstream must take within ``timeout``.

    aiohttp has no write timeout (its read timeout starts once the body is sent): a chunk
    still unwritten after ``timeout`` aborts the connection, and the request fails.
    """

    def __init__(self, body: AsyncIterator[bytes], timeout: float) -> None:
        self.timeout = timeout
        self.stalled = False
        self._abort: Callable[[], object] | None = None
        super().__init__(self._timed(body))

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        connection = getattr(writer, "transport", None)
        if connection is not None:
            self._abort = connection.abort
        await super().write_with_length(writer, content_length)

    async def _timed(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        if self._abort is None:  # no socket to abort: stop the task writing the body
            self._abort = getattr(asyncio.current_task(), "cancel", None)
        async for chunk in body:
            # armed only while aiohttp writes: waiting for the next chunk is not the upstream's
            timer = loop.call_later(self.timeout, self._stall)
            try:
                yield chunk
            finally:
                timer.cancel()

    def _stall(self) -> None:
        self.stalled = True
        if self._abort is not None:
            self._abort()


class Response:
    """An answer whose head has arrived: read it whole or in chunks, then close it."""

    __slots__ = ("_resp", "_upload", "content_length", "headers", "reason", "status")

    def __init__(self, resp: aiohttp.ClientResponse, upload: _Upload | None) -> None:
        self._resp = resp
        self._upload = upload
        self.status: int = resp.status
        self.reason: str = resp.reason or ""
        self.headers: RawHeaders = [(k.lower(), v) for k, v in resp.raw_headers]
        self.content_length: int | None = resp.content_length

    async def read(self) -> bytes:
        """The whole body (aiohttp's own buffer, no chunk list to join)."""
        try:
            return await self._resp.read()
        except _ERRORS as exc:
            raise _classify(exc, self._upload) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, each chunk handed on at once."""
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except _ERRORS as exc:
            raise _classify(exc, self._upload) from exc

    async def close(self) -> None:
        """Return a fully read connection to the pool; drop a half-read one."""
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


class Client:
    """A keep-alive pool to any number of hosts, opened on first use in the running loop."""

    def __init__(
        self, timeouts: Timeouts, *, max_connections: int = 200, keepalive_expiry: float = 30.0
    ) -> None:
        self.timeouts = timeouts
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        t = self.timeouts
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=self.keepalive_expiry,
                ttl_dns_cache=300,
            ),
            # aiohttp's connect includes the wait for a pooled connection
            timeout=aiohttp.ClientTimeout(
                total=None, connect=t.connect + t.pool, sock_connect=t.connect, sock_read=t.read
            ),
            auto_decompress=False,
            # the caller's headers go as they are: no defaults added
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    async def send(self, method: str, url: str, headers: RawHeaders, body: Body = None) -> Response:
        """Send a request; the answer's head has arrived when this returns. ``url`` goes out
        byte for byte (already encoded), ``headers`` as they are (no defaults added)."""
        session = self._session
        if session is None or session.closed:
            session = self._open()
        upload: _Upload | None = None
        data: bytes | _Upload | None
        if body is None or isinstance(body, bytes):
            data = body or None
        else:
            data = upload = _Upload(body, self.timeouts.write)
        try:
            resp = await session.request(
                method,
                yarl.URL(url, encoded=True),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                data=data,
                allow_redirects=False,
                compress=None,
            )
        except _ERRORS as exc:
            raise _classify(exc, upload) from exc
        return Response(resp, upload)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None
