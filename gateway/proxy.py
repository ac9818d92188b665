"""The reverse proxy: a pure ASGI handler that streams both ways without buffering."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

import anyio
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from gateway.routes import match_route
from gateway.security import Guard, InternalTokens
from gateway.settings import GatewaySettings
from gateway.upstream import UpstreamError, upstream_error
from libs.context import get_request_id
from libs.errors import AppError, app_error_response, error_response
from libs.identity import INTERNAL_HEADER
from libs.registry import Route
from libs.telemetry import inject_trace_headers
from libs.transport import Client, Response, TransportError

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
    # client credentials stop here: services trust only the signed internal token, and a
    # service (or its logs) never gets a key or token it could replay
    b"authorization",
    b"x-api-key",
}
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# uvicorn adds its own date and server headers; passing the upstream's would duplicate them
_RESPONSE_DROP = _HOP_BY_HOP | {b"date", b"server"}
_INTERNAL_PREFIX = b"x-aistack-"
_INTERNAL_HEADER_B = INTERNAL_HEADER.encode()
_SMALL_BODY = 65536
_RETRY_SOON = {"Retry-After": "2"}


class Proxy:
    """ASGI app: route by path prefix, forward to the owning service, stream the answer back."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.bases = settings.service_urls()
        self.upstream: Client | None = None
        self.tokens = InternalTokens(
            settings.internal_token_secret, settings.internal_token_ttl_seconds
        )
        # who is calling, what they may do, how often: set in the app lifespan
        self.guard: Guard | None = None

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
            await app_error_response(exc, openai=route.openai)(scope, receive, send)
        except UpstreamError as exc:
            log.warning("upstream %s failed: %s", route.service, exc.message)
            resp = error_response(
                exc.status,
                exc.code,
                exc.message,
                {"service": route.service},
                # a service down is worth another try soon (SDKs wait for it when retrying)
                headers=_RETRY_SOON if exc.status == 503 else None,
                openai=route.openai,
            )
            await resp(scope, receive, send)
        except _ClientGone:
            # nobody is left to answer
            return

    def _client_ip(self, scope: Scope) -> str:
        """The caller's address: the first X-Forwarded-For hop behind a trusted proxy."""
        if self.settings.trust_forwarded_headers:
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    return value.split(b",")[0].strip().decode("latin-1")
        client = scope.get("client")
        return str(client[0]) if client else ""

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
        upstream = self.upstream
        assert upstream is not None, "proxy used outside the app lifespan"
        guard = self.guard
        assert guard is not None, "proxy used outside the app lifespan"
        access = await guard.check(
            Headers(scope=scope), scope["method"], scope["path"], route, self._client_ip(scope)
        )
        headers = self._request_headers(scope)
        principal = access.principal
        if principal is not None:
            headers.append((_INTERNAL_HEADER_B, self.tokens.token(principal)))

        raw_path: bytes | None = scope.get("raw_path")
        url = self.bases[route.service] + (
            raw_path.decode("latin-1") if raw_path else quote(scope["path"])
        )
        qs: bytes = scope.get("query_string", b"")
        if qs:
            url += "?" + qs.decode("latin-1")

        failures: list[BaseException] = []
        body = await self._request_content(receive, failures)
        try:
            response = await upstream.send(scope["method"], url, headers, body)
        except BaseException as exc:
            if failures:
                raise failures[0] from None
            if isinstance(exc, TransportError):
                raise upstream_error(exc, route.service) from exc
            raise
        try:
            await self._relay(scope, receive, send, response, route, access.headers)
        except TransportError as exc:  # reading a small answer, before its head went out
            raise upstream_error(exc, route.service) from exc
        finally:
            await response.close()

    async def _request_content(
        self, receive: Receive, failures: list[BaseException]
    ) -> bytes | AsyncIterator[bytes] | None:
        """The whole body when it arrived in one message (the usual case), else a stream.

        What goes wrong while streaming it (client gone, body over the limit) is kept in
        ``failures``: an upstream client may wrap it into its own transport error.
        """
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
                try:
                    message = await receive()
                    if message["type"] != "http.request":
                        raise _ClientGone()
                except Exception as exc:
                    failures.append(exc)
                    raise
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        return rest()

    async def _relay(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upstream: Response,
        route: Route,
        extra: dict[str, str],
    ) -> None:
        out = [(k, v) for k, v in upstream.headers if k not in _RESPONSE_DROP]
        if extra:
            # the gateway's RateLimit-* unless the service reports its own (e.g. tokens)
            present = {k for k, _ in out}
            for name, value in extra.items():
                key = name.lower().encode()
                if key not in present:
                    out.append((key, value.encode()))
        start: Message = {"type": "http.response.start", "status": upstream.status, "headers": out}
        if scope["method"] == "HEAD":
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        length = upstream.content_length
        if length is not None and length <= _SMALL_BODY:
            # small bounded answer (most JSON): read it, then send it in one message
            body = await upstream.read()
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        await send(start)
        # long or open-ended (SSE): relay chunk by chunk, stop as soon as the client leaves
        async with anyio.create_task_group() as tg:

            async def pump() -> None:
                try:
                    async for chunk in upstream.chunks():
                        if chunk:
                            await send(
                                {"type": "http.response.body", "body": chunk, "more_body": True}
                            )
                except TransportError as exc:
                    # the status line is gone already: abort the connection so the client
                    # sees a truncated response rather than a complete-looking one
                    log.warning("upstream %s broke mid-stream: %s", route.service, exc)
                    raise _StreamBroken(str(exc)) from exc
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


class _ClientGone(Exception):
    """The client disconnected before its body arrived."""


class _StreamBroken(Exception):
    """The upstream broke after the response started."""
