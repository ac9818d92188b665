"""Who is calling: client credentials become a principal, checked against the route.

``Authorization: Bearer <JWT>`` is an access token signed by the auth service and verified
here against its cached JWKS; ``Authorization: Bearer ask_...`` or ``x-api-key: ask_...`` is
an API key, introspected at the auth service (cached). Then the route's scope and the
caller's rate limits apply.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from starlette.datastructures import Headers

from gateway.apikeys import API_KEY_PREFIX, ApiKeyResolver, looks_like_api_key
from gateway.jwks import ALLOWED_ALGORITHMS, JWKSCache
from gateway.ratelimit import FailureLimiter, RequestLimiter
from gateway.revocations import SessionRevocations
from libs.errors import Forbidden, RateLimited, ServiceUnavailable, Unauthorized
from libs.identity import Principal, sign_internal_token
from libs.permissions import scopes_for_roles
from libs.registry import Route

log = logging.getLogger("aistack.gateway.security")

REALM = 'Bearer realm="aistack"'
_REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud"]
_MAX_VERIFIED = 20_000
_VERIFIED_TTL = 60.0
# what may be meant as an access token (a compact JWS, or a cut-off one): its JSON header's
# base64 always starts "eyJ", and its parts are joined by dots; anything else is taken for a key
_TOKEN_LIKE = re.compile(r"^eyJ|\.")


@dataclass(slots=True)
class Access:
    """The outcome for one request: who (None: anonymous) and headers for the answer."""

    principal: Principal | None
    headers: dict[str, str] = field(default_factory=dict)


def _unauthorized(message: str, code: str, *, invalid: bool = True) -> Unauthorized:
    challenge = f'{REALM}, error="invalid_token"' if invalid else REALM
    return Unauthorized(message, code=code, headers={"WWW-Authenticate": challenge})


def credentials(headers: Headers) -> str | None:
    """The bearer token or API key the client presented (Authorization wins)."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthorized("Use 'Authorization: Bearer <token>'", "invalid_authorization")
        return value.strip()
    key = headers.get("x-api-key")
    if key is not None:
        return key.strip()
    return None


class InternalTokens:
    """The signed principal for services, reused while at least half its lifetime remains.

    Principals of cached API keys and verified access tokens are shared objects, so the
    same caller is signed for once per interval rather than on every request.
    """

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self.secret = secret
        self.ttl = ttl_seconds
        self._tokens: dict[int, tuple[Principal, float, bytes]] = {}

    def token(self, principal: Principal) -> bytes:
        now = time.monotonic()
        entry = self._tokens.get(id(principal))
        # identity, not equality: an id may be reused once its object is gone
        if entry is not None and entry[0] is principal and entry[1] > now:
            return entry[2]
        token = sign_internal_token(principal, self.secret, self.ttl).encode()
        if len(self._tokens) >= _MAX_VERIFIED:
            self._tokens = {k: e for k, e in self._tokens.items() if e[1] > now}
            if len(self._tokens) >= _MAX_VERIFIED:
                self._tokens.clear()
        self._tokens[id(principal)] = (principal, now + self.ttl / 2, token)
        return token


class Guard:
    """Authenticates, authorizes and rate-limits requests in front of the proxy."""

    def __init__(
        self,
        *,
        jwks: JWKSCache,
        api_keys: ApiKeyResolver,
        sessions: SessionRevocations | None = None,
        limiter: RequestLimiter | None,
        failures: FailureLimiter | None = None,
        issuer: str,
        audience: str,
        leeway: int = 5,
    ) -> None:
        self.jwks = jwks
        self.api_keys = api_keys
        self.sessions = sessions
        self.failures = failures
        self.limiter = limiter
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._retry_after = str(max(1, math.ceil(jwks.min_refetch_interval)))
        self._verified: dict[str, tuple[float, Principal]] = {}

    async def check(
        self, headers: Headers, method: str, path: str, route: Route, client_ip: str = ""
    ) -> Access:
        """Resolve and authorize the caller; raises 401/403/429/503 as :class:`AppError`."""
        if route.public:
            # credentials are optional here; bad ones are ignored, not refused. Only bad
            # ones: an auth outage (JWKS or introspection unreachable) is a 503, as anywhere,
            # since passing the caller on anonymous gets them a 401 from the service, and a
            # client told 401 throws a perfectly good token away
            try:
                token = credentials(headers)
                if not token or (self.failures and self.failures.blocked(client_ip)):
                    return Access(None)
                return Access(await self._resolve(token, client_ip))
            except Unauthorized:
                return Access(None)
        token = credentials(headers)
        if not token:
            raise _unauthorized("Authentication required", "unauthorized", invalid=False)
        if self.failures is not None:
            wait = self.failures.blocked(client_ip)
            if wait:
                raise RateLimited(
                    "Too many failed authentication attempts",
                    code="too_many_auth_failures",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        principal = await self._resolve(token, client_ip)
        scope = route.required_scope(method, path)
        if scope is not None and not principal.has_scope(scope):
            raise Forbidden(f"Missing scope '{scope}'", code="insufficient_scope")
        if self.limiter is None:
            return Access(principal)
        return Access(principal, await self.limiter.check(principal))

    async def _resolve(self, token: str, client_ip: str) -> Principal:
        try:
            return await self.principal(token)
        except Unauthorized:
            # guessing keys or forging tokens costs the guesser, not the auth service
            if self.failures is not None:
                await self.failures.record(client_ip)
            raise
        except ServiceUnavailable as exc:
            if exc.headers and "Retry-After" in exc.headers:
                raise
            # the keys are not refetched sooner than this: say when trying again is worth it
            # (a copy: waiters on one introspection share the exception)
            raise ServiceUnavailable(
                exc.message,
                code=exc.code,
                details=exc.details,
                headers={**(exc.headers or {}), "Retry-After": self._retry_after},
            ) from exc

    async def principal(self, token: str) -> Principal:
        """The principal behind a bearer token or API key."""
        if looks_like_api_key(token):
            return await self._api_key(token)
        if token.startswith(API_KEY_PREFIX) or not _TOKEN_LIKE.search(token):
            # neither a key nor a JWT: most likely a key mistyped, cut short or from another
            # vendor (OpenAI's SDKs send any api_key as a bearer token), so say so
            raise _unauthorized(
                f"Invalid API key (aistack API keys start with '{API_KEY_PREFIX}')",
                "invalid_api_key",
            )
        return await self._jwt(token)

    async def _api_key(self, key: str) -> Principal:
        info = await self.api_keys.resolve(key)
        if not info.active:
            raise _unauthorized("Invalid or revoked API key", "invalid_api_key")
        if info.expired():
            raise _unauthorized("API key expired", "api_key_expired")
        return info.principal()

    async def _jwt(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None and cached[0] > time.time():
            principal = cached[1]
        else:
            principal = await self._verify(token)
        sid = principal.session_id
        if sid is not None and self.sessions is not None and await self.sessions.is_revoked(sid):
            raise _unauthorized("This session has ended; sign in again", "session_revoked")
        return principal

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _unauthorized("Invalid access token", "invalid_token") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS or not isinstance(kid, str):
            raise _unauthorized("Invalid access token", "invalid_token")
        key = await self.jwks.key(kid)
        if key is None or key.alg != alg:
            raise _unauthorized("Invalid access token", "invalid_token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _unauthorized("Access token expired", "token_expired") from exc
        except jwt.PyJWTError as exc:
            raise _unauthorized("Invalid access token", "invalid_token") from exc
        raw_roles = claims.get("roles") or []
        if not isinstance(raw_roles, list):
            raise _unauthorized("Invalid access token", "invalid_token")
        try:
            roles = [str(r) for r in raw_roles]
            principal = Principal(
                user_id=uuid.UUID(str(claims["sub"])),
                org_id=uuid.UUID(str(claims["org"])) if claims.get("org") else None,
                roles=roles,
                scopes=scopes_for_roles(roles),
                session_id=uuid.UUID(str(claims["sid"])) if claims.get("sid") else None,
            )
        except (ValueError, TypeError) as exc:
            raise _unauthorized("Invalid access token", "invalid_token") from exc
        # the exact same bytes were verified: skip the signature until the token expires
        # (or for a while at most: a key dropped from the JWKS must stop verifying)
        if len(self._verified) >= _MAX_VERIFIED:
            now = time.time()
            self._verified = {t: e for t, e in self._verified.items() if e[0] > now}
            if len(self._verified) >= _MAX_VERIFIED:
                self._verified.clear()
        until = min(float(claims["exp"]) + self.leeway, time.time() + _VERIFIED_TTL)
        self._verified[token] = (until, principal)
        return principal
