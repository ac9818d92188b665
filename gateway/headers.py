"""Security headers on every gateway answer, and the CSP that lets /docs run."""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# JSON answers need nothing from a browser; nobody may frame any page of the API
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
SWAGGER_CDN = "https://cdn.jsdelivr.net"
FASTAPI_FAVICON = "https://fastapi.tiangolo.com"


def docs_csp(html: str, *, local_assets: bool) -> str:
    """A CSP for the Swagger UI page: its assets, its one inline script (by hash), no framing."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in _INLINE_SCRIPT.findall(html)
    )
    cdn = "" if local_assets else f" {SWAGGER_CDN}"
    img = "" if local_assets else f" {FASTAPI_FAVICON}"
    return (
        "default-src 'none'; "
        f"script-src 'self'{cdn} {hashes}; "
        # Swagger UI sets inline styles on its elements
        f"style-src 'self'{cdn} 'unsafe-inline'; "
        f"img-src 'self' data:{img}; "
        "connect-src 'self'; "
        "font-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


# always the gateway's
_REPLACED = frozenset({b"x-content-type-options"})
_REPLACED_TLS = _REPLACED | {b"strict-transport-security"}
# set unless the route set its own
_DEFAULTS = (
    (b"content-security-policy", API_CSP.encode("latin-1")),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


class SecurityHeadersMiddleware:
    """nosniff, a CSP (kept when a route set its own), Referrer-Policy, HSTS over TLS."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        behind_tls: bool = False,
        trust_forwarded_headers: bool = False,
        hsts_max_age: int = 31_536_000,
    ) -> None:
        self.app = app
        self.behind_tls = behind_tls
        self.trust_forwarded = trust_forwarded_headers
        self.hsts = f"max-age={hsts_max_age}; includeSubDomains"

    def _over_tls(self, scope: Scope) -> bool:
        if self.behind_tls or scope.get("scheme") == "https":
            return True
        if self.trust_forwarded:
            for k, v in scope["headers"]:
                if k == b"x-forwarded-proto":
                    return v.split(b",")[0].strip().lower() == b"https"
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = self._over_tls(scope)
        hsts = self.hsts.encode("latin-1")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # raw header list, no MutableHeaders: this runs on every answer
                raw = message.get("headers")
                headers = list(raw) if raw is not None else []
                present = {k.lower() for k, _ in headers}
                replaced = _REPLACED_TLS if tls else _REPLACED
                if not replaced.isdisjoint(present):
                    headers = [(k, v) for k, v in headers if k.lower() not in replaced]
                headers.append((b"x-content-type-options", b"nosniff"))
                for name, value in _DEFAULTS:
                    if name not in present:
                        headers.append((name, value))
                if tls:
                    headers.append((b"strict-transport-security", hsts))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
