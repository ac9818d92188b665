"""The reverse proxy: a pure ASGI handler that streams both ways without buffering."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import httpx
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from gateway import security
from gateway.routes import Route, match_route
from gateway.settings import GatewaySettings
from libs.context import get_request_id
from libs.errors import AppError, error_response
from libs.identity import INTERNAL_HEADER, sign_internal_token
from libs.telemetry import inject_trace_headers

log = logging.getLogger("aistack.gateway.proxy")

# RFC 9110 hop-by-hop headers, plus those the gateway sets itself
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REQUEST_DROP = _HOP_BY_HOP | {
    b"host",
    b"x-request-id",
    b"traceparent",
    b"tracestate",
    b"baggage",
}
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# uvicorn adds its own date and server headers; passing the upstream's would duplicate them
_RESPONSE_DROP = _HOP_BY_HOP | {b"date", b"server"}
_INTERNAL_PREFIX = b"x-aistack-"
_INTERNAL_HEADER_B = INTERNAL_HEADER.encode()


def make_upstream_client(settings: GatewaySettings) -> httpx.AsyncClient:
    """One keep-alive pool for the proxied traffic (no retries: a POST is never sent twice)."""
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=settings.upstream_max_connections,
                max_keepalive_connections=settings.upstream_max_keepalive,
                keepalive_expiry=30.0,
            )
        ),
        timeout=httpx.Timeout(
            connect=settings.upstream_connect_timeout,
            read=settings.upstream_read_timeout,
            write=settings.upstream_write_timeout,
            pool=settings.upstream_pool_timeout,
        ),
        follow_redirects=False,
    )


class _UpstreamFailed(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _classify(exc: httpx.HTTPError, service: str) -> _UpstreamFailed:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return _UpstreamFailed(503, "service_unavailable", f"The {service} service is unavailable")
    if isinstance(exc, httpx.TimeoutException):
        return _UpstreamFailed(504, "gateway_timeout", f"The {service} service timed out")
    return _UpstreamFailed(502, "bad_gateway", f"The {service} service failed to answer")


class Proxy:
    """ASGI app: route by path prefix, forward to the owning service, stream the answer back."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.bases = settings.service_urls()
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        route = match_route(path)
        if route is None:
            resp = error_response(404, "not_found", "No route matches this path")
            await resp(scope, receive, send)
            return
        # metrics label: the prefix, not the catch-all pattern
        scope["route"] = route
        try:
            await self._forward(scope, receive, send, route)
        except AppError as exc:
            resp = error_response(
                exc.status_code,
                exc.code,
                exc.message,
                exc.details,
                headers=exc.headers,
                openai=route.openai,
            )
            await resp(scope, receive, send)
        except _UpstreamFailed as exc:
            log.warning("upstream %s failed: %s", route.service, exc.message)
            resp = error_response(
                exc.status,
                exc.code,
                exc.message,
                {"service": route.service},
                openai=route.openai,
            )
            await resp(scope, receive, send)
        except _ClientGone:
            # nobody is left to answer
            return

    def _request_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        out: list[tuple[bytes, bytes]] = []
        extra_drop: set[bytes] | None = None
        trust = self.settings.trust_forwarded_headers
        xff: bytes | None = None
        proto: bytes | None = None
        fhost: bytes | None = None
        host: bytes | None = None
        for name, value in raw:
            if name in _REQUEST_DROP:
                if name == b"connection":
                    extra_drop = {t.strip().lower() for t in value.split(b",")}
                elif name == b"host":
                    host = value
                continue
            if name.startswith(_INTERNAL_PREFIX):
                # identity comes from the gateway only, never from the client
                continue
            if name in _FORWARDED:
                if trust:
                    if name == b"x-forwarded-for":
                        xff = value
                    elif name == b"x-forwarded-proto":
                        proto = value
                    else:
                        fhost = value
                continue
            out.append((name, value))
        if extra_drop:
            out = [(k, v) for k, v in out if k not in extra_drop]
        client = scope.get("client")
        client_ip = client[0].encode() if client else b""
        if xff and client_ip:
            xff = xff + b", " + client_ip
        out.append((b"x-forwarded-for", xff or client_ip))
        out.append((b"x-forwarded-proto", proto or scope.get("scheme", "http").encode()))
        if fhost or host:
            out.append((b"x-forwarded-host", fhost or host or b""))
        rid = get_request_id()
        if rid:
            out.append((b"x-request-id", rid.encode()))
        carrier: dict[str, str] = {}
        inject_trace_headers(carrier)
        for k, v in carrier.items():
            out.append((k.encode(), v.encode()))
        return out

    async def _forward(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        client = self.client
        assert client is not None, "proxy used outside the app lifespan"
        headers = self._request_headers(scope)
        principal = await security.resolve_principal(Headers(scope=scope), route)
        if principal is not None:
            token = sign_internal_token(
                principal,
                self.settings.internal_token_secret,
                self.settings.internal_token_ttl_seconds,
            )
            headers.append((_INTERNAL_HEADER_B, token.encode()))

        url = self.bases[route.service] + scope.get("raw_path", path_bytes(scope)).decode("latin-1")
        qs: bytes = scope.get("query_string", b"")
        if qs:
            url += "?" + qs.decode("latin-1")

        content = await self._request_content(receive)
        request = httpx.Request(scope["method"], url, headers=headers, content=content)
        try:
            upstream = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _classify(exc, route.service) from exc

        try:
            await self._relay(scope, receive, send, upstream, route)
        finally:
            await upstream.aclose()

    async def _request_content(self, receive: Receive) -> bytes | AsyncIterator[bytes] | None:
        """The whole body when it arrived in one message (the usual case), else a stream."""
        first = await receive()
        if first["type"] != "http.request":
            raise _ClientGone()
        body: bytes = first.get("body", b"")
        if not first.get("more_body", False):
            return body or None

        async def rest() -> AsyncIterator[bytes]:
            if body:
                yield body
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise _ClientGone()
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        return rest()

    async def _relay(
        self, scope: Scope, receive: Receive, send: Send, upstream: httpx.Response, route: Route
    ) -> None:
        out_headers = [
            (k.lower(), v) for k, v in upstream.headers.raw if k.lower() not in _RESPONSE_DROP
        ]
        start: Message = {
            "type": "http.response.start",
            "status": upstream.status_code,
            "headers": out_headers,
        }
        if scope["method"] == "HEAD":
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        length = upstream.headers.get("content-length")
        if length is not None and int(length) <= 65536:
            # small bounded answer (most JSON): read it, then send it in one message
            try:
                body = await upstream.aread()
            except httpx.HTTPError as exc:
                raise _classify(exc, route.service) from exc
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        await send(start)
        # long or open-ended (SSE): stream chunk by chunk and stop as soon as the client leaves
        async with anyio.create_task_group() as tg:

            async def pump() -> None:
                try:
                    async for chunk in upstream.aiter_raw():
                        if chunk:
                            await send(
                                {"type": "http.response.body", "body": chunk, "more_body": True}
                            )
                except httpx.HTTPError as exc:
                    # the status line is gone already: abort the connection so the client
                    # sees a truncated response rather than a complete-looking one
                    log.warning("upstream %s broke mid-stream: %r", route.service, exc)
                    tg.cancel_scope.cancel()
                    raise _StreamBroken() from exc
                await send({"type": "http.response.body", "body": b""})
                tg.cancel_scope.cancel()

            async def watch_disconnect() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(pump)
            tg.start_soon(watch_disconnect)


def path_bytes(scope: Scope) -> bytes:
    """Fallback raw path when the server gives none."""
    from urllib.parse import quote

    return quote(scope["path"]).encode()


class _ClientGone(Exception):
    """The client disconnected before its body arrived."""


class _StreamBroken(Exception):
    """The upstream broke after the response started."""
