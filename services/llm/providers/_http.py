"""HTTP plumbing shared by every HTTP adapter (OpenAI, Azure, Anthropic, Gemini, Ollama).

Client construction from provider config (httpx requests over :mod:`libs.transport`'s pool),
upstream error classification, and incremental SSE / NDJSON parsing that is correct whatever
way the bytes are split on the wire. This is the only SSE parser of the providers package.
"""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from libs import transport
from services.llm.providers.base import ProviderError

RETRYABLE_STATUSES = frozenset({408, 409, 429, 529})


def api_key(config: Mapping[str, Any]) -> str | None:
    """The configured key: ``api_key`` verbatim, else the env var named by ``api_key_env``."""
    key = config.get("api_key")
    if key:
        return str(key)
    env = config.get("api_key_env")
    if env:
        return os.environ.get(str(env)) or None
    return None


class UpstreamClient(httpx.AsyncClient):
    """An httpx client for one vendor whose :meth:`send_upstream` goes straight to the transport.

    ``AsyncClient.send`` runs auth flows, redirect handling and cookie extraction on every
    call; vendor calls use none of them (credentials are headers, redirects are errors, cookies
    are ignored), and on the chat path that bookkeeping cost as much as the HTTP exchange
    itself. Requests are still built by the client (base URL, default headers, timeouts).
    """

    def __init__(self, *, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self.upstream = transport
        # the client's headers plus Host, per host: what httpx.Request would derive per call
        self._post_headers: dict[bytes, httpx.Headers] = {}

    def post_request(
        self, url: httpx.URL, content: bytes, extensions: dict[str, Any]
    ) -> httpx.Request:
        """A POST of ``content`` to ``url`` (absolute), as ``httpx.Request(..., content=...)``
        would build it with the client's headers, at a fifth of the cost: the header list is
        normalised once per host, not per call (a visible share of every chat call)."""
        template = self._post_headers.get(url.netloc)
        if template is None:
            template = httpx.Headers(self.headers)
            template["host"] = url.netloc.decode("ascii")
            if len(self._post_headers) < 64:
                self._post_headers[url.netloc] = template
        headers = httpx.Headers(template)  # a copy of the normalised list
        headers["content-length"] = str(len(content))
        request = httpx.Request(
            "POST", url, headers=headers, stream=httpx.ByteStream(content), extensions=extensions
        )
        request._content = content  # read already: aread() returns it without a copy
        return request

    async def send_upstream(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` as is; the response body is not read yet (the caller closes it)."""
        response = await self.upstream.handle_async_request(request)
        response.request = request
        return response


class _Body(httpx.AsyncByteStream):
    """A pooled answer's body under httpx's response."""

    def __init__(self, response: transport.Response) -> None:
        self.response = response

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.response.chunks()  # no generator of its own around it: one hop per chunk

    async def read_all(self) -> bytes:
        """The whole body in one piece (no chunk iteration and join)."""
        return await self.response.read()

    async def aclose(self) -> None:
        await self.response.close()


class PooledTransport(httpx.AsyncBaseTransport):
    """httpx requests sent through a :class:`libs.transport.Client`.

    The adapters keep httpx's request building and responses (and tests their in-process
    httpx transports); the bytes go through the shared pool. Its failures reach the adapters
    as :class:`libs.transport.TransportError`, which :func:`transport_error` classifies.
    """

    def __init__(self, client: transport.Client) -> None:
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        resp = await self.client.send(request.method, str(request.url), request.headers.raw, body)
        return httpx.Response(
            resp.status,
            headers=resp.headers,
            stream=_Body(resp),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": resp.reason.encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        await self.client.aclose()


def make_client(
    config: Mapping[str, Any], *, default_base_url: str, headers: Mapping[str, str]
) -> UpstreamClient:
    """The client of one vendor: one pooled keep-alive :class:`libs.transport.Client`, or
    ``transport`` from config (an httpx transport: tests).

    ``http_pool`` may only name ``aiohttp`` (the default): ``pyreqwest``, ``split`` and
    ``httpx`` were removed (docs/benchmarks.md, "One transport layer").
    """
    timeout = float(config.get("timeout", 60.0))
    connect_timeout = float(config.get("connect_timeout", min(timeout, 5.0)))
    sender = config.get("transport")
    if sender is None:
        pool = config.get("http_pool", "aiohttp")
        if pool != "aiohttp":
            raise ProviderError(
                f"http_pool {pool!r} was removed: aiohttp is the only connection pool "
                "(remove the key, or set it to 'aiohttp')",
                status=500,
                code="provider_misconfigured",
            )
        sender = PooledTransport(
            transport.Client(
                transport.Timeouts(
                    connect=connect_timeout, read=timeout, write=timeout, pool=timeout
                ),
                # one pooled keep-alive client per provider; sized for a busy gateway
                max_connections=int(config.get("max_connections", 200)),
                keepalive_expiry=float(config.get("keepalive_expiry", 30.0)),
            )
        )
    return UpstreamClient(
        base_url=str(config.get("base_url") or default_base_url).rstrip("/"),
        headers={**headers, **dict(config.get("headers") or {})},
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        transport=sender,
    )


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def error_for_status(
    provider: str,
    status: int,
    message: str,
    *,
    retry_after: float | None = None,
) -> ProviderError:
    """Classify an upstream HTTP status into a ProviderError."""
    text = f"{provider}: upstream returned {status}: {message}"
    if status in (401, 403):
        return ProviderError(text, status=502, provider=provider, code="upstream_auth_failed")
    if status == 429:
        return ProviderError(
            text,
            status=429,
            retryable=True,
            retry_after=retry_after,
            provider=provider,
            code="upstream_rate_limited",
        )
    if status == 529:
        return ProviderError(
            text,
            status=503,
            retryable=True,
            retry_after=retry_after,
            provider=provider,
            code="upstream_overloaded",
        )
    if status in RETRYABLE_STATUSES or status >= 500:
        return ProviderError(
            text,
            status=502,
            retryable=True,
            retry_after=retry_after,
            provider=provider,
            code="upstream_unavailable",
        )
    if status == 404:
        return ProviderError(text, status=404, provider=provider, code="upstream_not_found")
    return ProviderError(text, status=400, provider=provider, code="upstream_bad_request")


def error_from_response(
    provider: str, response: httpx.Response, body: bytes, *, message: str | None = None
) -> ProviderError:
    """A ProviderError for a non-2xx response (``message`` extracted by the adapter)."""
    if message is None:
        message = body.decode("utf-8", "replace")[:500] or response.reason_phrase
    return error_for_status(
        provider,
        response.status_code,
        message,
        retry_after=parse_retry_after(response.headers),
    )


# what a failed exchange raises: the pool's errors, or httpx's (its decoding, test transports)
TRANSPORT_ERRORS = (transport.TransportError, httpx.HTTPError)


def transport_error(provider: str, exc: Exception) -> ProviderError:
    """Timeouts → 504 retryable; connection problems and broken streams → 502 retryable."""
    if isinstance(exc, transport.TimedOut | httpx.TimeoutException):
        return ProviderError(
            f"{provider}: upstream timed out ({type(exc).__name__})",
            status=504,
            retryable=True,
            provider=provider,
            code="upstream_timeout",
        )
    if isinstance(exc, transport.ConnectFailed | httpx.ConnectError):
        return ProviderError(
            f"{provider}: cannot connect to upstream: {exc}",
            status=502,
            retryable=True,
            provider=provider,
            code="upstream_unavailable",
        )
    return ProviderError(
        f"{provider}: upstream connection failed: {type(exc).__name__}: {exc}",
        status=502,
        retryable=True,
        provider=provider,
        code="upstream_stream_broken",
    )


def broken_stream(provider: str, why: str) -> ProviderError:
    """The stream ended or failed before the vendor's terminal event."""
    return ProviderError(
        f"{provider}: stream ended early: {why}",
        status=502,
        retryable=True,
        provider=provider,
        code="upstream_stream_broken",
    )


def malformed(provider: str, why: str) -> ProviderError:
    """The upstream sent something that is not its documented format."""
    return ProviderError(
        f"{provider}: malformed upstream response: {why}",
        status=502,
        provider=provider,
        code="upstream_bad_response",
    )


def loads_object(provider: str, data: str | bytes) -> dict[str, Any]:
    """Parse one JSON object or raise a ``malformed`` ProviderError."""
    try:
        value = orjson.loads(data)
    except ValueError as exc:
        raise malformed(provider, f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise malformed(provider, "expected a JSON object")
    return value


@dataclass
class SSEEvent:
    event: str
    data: str
    id: str | None = None


class SSEParser:
    """Incremental text/event-stream parser (WHATWG rules) fed with arbitrary byte slices.

    Handles CRLF / CR / LF line ends split across slices and UTF-8 sequences split across
    slices; an event is emitted at its terminating blank line only.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._first = True

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._decoder.decode(chunk)
        if self._first and text:
            self._first = False
            text = text.removeprefix("\ufeff")
        self._buf += text
        return self._drain()

    def _drain(self) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buf, pos, end_of_buf = self._buf, 0, len(self._buf)
        # str.find instead of a per-character loop: this runs for every streamed chunk
        has_cr = "\r" in buf
        while pos < end_of_buf:
            nl = buf.find("\n", pos)
            cr = buf.find("\r", pos) if has_cr else -1
            if cr < 0:
                if nl < 0:
                    break
                cut, end = nl, nl + 1
            elif 0 <= nl < cr:
                cut, end = nl, nl + 1
            else:
                if cr + 1 == end_of_buf:
                    break  # a '\n' may follow in the next slice
                cut, end = cr, (cr + 2 if buf[cr + 1] == "\n" else cr + 1)
            line, pos = buf[pos:cut], end
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._buf = buf[pos:]
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


async def iter_sse(provider: str, response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """Events of a streamed response; transport failures become ProviderError."""
    parser = SSEParser()
    try:
        async for chunk in response.aiter_bytes():
            for event in parser.feed(chunk):
                yield event
    except TRANSPORT_ERRORS as exc:
        raise transport_error(provider, exc) from exc


async def iter_ndjson(provider: str, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """JSON objects of a newline-delimited JSON stream (a trailing line without '\\n' counts)."""
    buf = b""
    try:
        async for chunk in response.aiter_bytes():
            buf += chunk
            # b"\n" never occurs inside a UTF-8 multi-byte sequence, so splitting bytes is safe.
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    yield loads_object(provider, line)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(provider, exc) from exc
    if buf.strip():
        try:
            value = json.loads(buf)
        except ValueError:
            raise broken_stream(provider, "last line is incomplete") from None
        if not isinstance(value, dict):
            raise malformed(provider, "expected a JSON object")
        yield value


async def drain(events: AsyncIterator[Any], *, within: float = 1.0) -> None:
    """Read a stream to its end after the vendor's terminal event.

    The pool takes a connection back only when its answer was read to the end; returning at
    the terminal event would close it and cost a new connection per stream.
    """
    try:
        async with asyncio.timeout(within):
            async for _ in events:
                pass
    except (TimeoutError, ProviderError):
        pass


MessageExtractor = Callable[[bytes], "str | None"]
RetryDelayExtractor = Callable[[bytes], "float | None"]


async def send(
    client: httpx.AsyncClient,
    provider: str,
    request: httpx.Request,
    extract_message: MessageExtractor,
    retry_delay: RetryDelayExtractor | None = None,
) -> httpx.Response:
    """Send with a streamed body; raise ProviderError for transport failures and non-2xx.

    ``retry_delay`` reads a vendor's own retry hint from an error body, used when a retryable
    answer has no ``Retry-After`` header. The caller owns the returned response and must close it.
    """
    try:
        if isinstance(client, UpstreamClient):
            response = await client.send_upstream(request)
        else:
            response = await client.send(request, stream=True)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(provider, exc) from exc
    if response.status_code < 300:
        return response
    try:
        body = await response.aread()
    except TRANSPORT_ERRORS:
        body = b""
    finally:
        await response.aclose()
    try:
        message = extract_message(body)
    except Exception:
        message = None
    error = error_from_response(provider, response, body, message=message)
    if retry_delay is not None and error.retryable and error.retry_after is None:
        error.retry_after = retry_delay(body)
    raise error


async def send_json(
    client: httpx.AsyncClient,
    provider: str,
    request: httpx.Request,
    extract_message: MessageExtractor,
    retry_delay: RetryDelayExtractor | None = None,
) -> dict[str, Any]:
    """Send and return the whole JSON object body."""
    response = await send(client, provider, request, extract_message, retry_delay)
    try:
        read_all = getattr(response.stream, "read_all", None)
        if read_all is not None and "content-encoding" not in response.headers:
            body = await read_all()
        else:  # httpx decodes what the vendor compressed (httpx's default accept-encoding)
            body = await response.aread()
    except TRANSPORT_ERRORS as exc:
        raise transport_error(provider, exc) from exc
    finally:
        await response.aclose()
    return loads_object(provider, body)
