"""The HTTP client of the request path: the gateway's proxy and the llm's vendor calls.

One keep-alive pool per client over aiohttp, the fastest backend measured (pyreqwest and
httpx were dropped: docs/benchmarks.md, "One transport layer"). Bytes pass through as they
are (no decompression, redirects or cookies), and every failure is one of three kinds that
each caller turns into its own answer.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.payload
import httptools
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


# --- one origin, whole bodies: the least client CPU per request


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer: status, raw headers (names lower-cased) and body."""

    status: int
    headers: RawHeaders
    body: bytes

    def header(self, name: bytes) -> bytes:
        return next((v for k, v in self.headers if k == name), b"")


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one exchange at a time, parsed with httptools."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.headers: RawHeaders = []
        self.body: list[bytes] = []
        self.closed = False
        self.idle_since = 0.0
        self.arrived = 0.0  # when answer bytes last arrived (the read timeout's clock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:  # the request leaves at once, as with every HTTP client
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.arrived = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(Broken(f"malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(Broken(f"the connection closed before a whole answer ({exc or 'EOF'})"))

    def fail(self, exc: TransportError) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        answer = Answer(self.parser.get_status_code(), self.headers, b"".join(self.body))
        self.headers, self.body = [], []
        if not self.parser.should_keep_alive():
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(answer)


class Origin:
    """Keep-alive connections to one ``http://host:port``, for many small whole requests (a
    batch's lines): the request bytes are written as one buffer and the answer parsed with
    httptools, several times less CPU per request than :class:`Client` (docs/benchmarks.md,
    "Jobs: the Batch API"). No streaming, redirects or compression; https verifies as usual.

    A connection idle for more than ``idle_s`` (below the server's keep-alive timeout) is not
    reused, so a request is never written to a connection the server is closing: a failure
    after the write (:class:`Broken`, :class:`TimedOut`) means the request may have run.
    """

    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts,
        *,
        max_connections: int = 256,
        idle_s: float = 2.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = yarl.URL(base_url)
        if parts.scheme not in ("http", "https") or not parts.host:
            raise ValueError(f"Origin speaks http or https to a host: {base_url}")
        self.host, self.port = parts.host, parts.port or (443 if parts.scheme == "https" else 80)
        # https: ``tls``, else the system's trust store and hostname checks (aiohttp's default)
        self._tls = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        self.timeouts, self.idle_s = timeouts, idle_s
        self._host_line = f"host: {self.host}:{self.port}\r\n".encode()
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def post(self, path: str, headers: RawHeaders, body: bytes) -> Answer:
        """POST ``body`` to ``path`` (under the base URL's path) and read the whole answer."""
        head = b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers)
        data = b"POST %s HTTP/1.1\r\n%s%scontent-length: %d\r\n\r\n%s" % (
            (self.prefix + path).encode(),
            self._host_line,
            head,
            len(body),
            body,
        )
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeouts.pool)
        except TimeoutError:
            raise ConnectTimedOut(f"no free connection within {self.timeouts.pool}s") from None
        try:
            conn = await self._connection()
            return await self._exchange(conn, data)
        finally:
            self._slots.release()

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_s:
                return conn
            conn.fail(Broken("idle too long"))
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port, ssl=self._tls),
                self.timeouts.connect,
            )
        except TimeoutError:
            raise ConnectTimedOut(f"no connection within {self.timeouts.connect}s") from None
        except OSError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return conn

    async def _exchange(self, conn: _Connection, data: bytes) -> Answer:
        loop = asyncio.get_running_loop()
        waiter = conn.waiter = loop.create_future()
        read = self.timeouts.read
        conn.arrived = time.monotonic()

        timers: list[asyncio.TimerHandle] = []

        def check() -> None:  # re-armed while bytes keep arriving within ``read``
            silent = time.monotonic() - conn.arrived
            if silent >= read:
                conn.fail(TimedOut(f"no answer bytes for {read}s"))
            else:
                timers.append(loop.call_later(read - silent, check))

        timers.append(loop.call_later(read, check))
        assert conn.transport is not None
        done = False
        try:
            conn.transport.write(data)
            answer = await waiter
            done = True
            return answer
        finally:
            timers[-1].cancel()
            conn.waiter = None
            if done and not conn.closed:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            elif not conn.closed:  # cancelled or failed mid-exchange: the connection is unusable
                conn.fail(Broken("abandoned"))

    async def aclose(self) -> None:
        """Close the idle connections (those in use close when their exchange ends)."""
        while self._idle:
            self._idle.pop().fail(Broken("closed"))
