"""The internal identity token: what the gateway forwards and services trust.

The gateway resolves a user JWT or an API key into a :class:`Principal` and forwards it as a
short-lived HS256 token in the ``x-aistack-principal`` header. Services verify it with the
shared ``INTERNAL_TOKEN_SECRET`` and never look at client credentials themselves.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

from libs.errors import Forbidden, Unauthorized
from libs.permissions import Scope
from libs.state import AppState

INTERNAL_HEADER = "x-aistack-principal"
INTERNAL_AUDIENCE = "aistack-internal"
INTERNAL_ISSUER = "aistack-gateway"
_ALG = "HS256"


class Principal(BaseModel):
    """Who is calling: a user (through a JWT) or an API key, always within one organization."""

    user_id: uuid.UUID | None = None
    org_id: uuid.UUID | None = None
    roles: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)
    key_id: uuid.UUID | None = None
    plan: str | None = None
    session_id: uuid.UUID | None = None
    # limits configured on the API key (None: the organization's defaults apply)
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    # the API key's own monthly spend budget in USD (None: only the organization's applies)
    monthly_budget_usd: Decimal | None = None
    flags: dict[str, bool] = Field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "api_key" if self.key_id else ("user" if self.user_id else "service")

    def has_scope(self, scope: str) -> bool:
        """API keys carry explicit scopes; user tokens carry every scope their role grants."""
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def require_scope(self, scope: str) -> None:
        if not self.has_scope(scope):
            raise Forbidden(f"Missing scope '{scope}'", code="insufficient_scope")

    def require_org(self) -> uuid.UUID:
        if self.org_id is None:
            raise Forbidden("An active organization is required", code="no_active_org")
        return self.org_id


def sign_internal_token(principal: Principal, secret: str, ttl_seconds: int = 60) -> str:
    """Sign a principal for one hop from the gateway to a service."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": INTERNAL_ISSUER,
        "aud": INTERNAL_AUDIENCE,
        "iat": now,
        "exp": now + ttl_seconds,
        "p": principal.model_dump(mode="json", exclude_defaults=True),
    }
    return jwt.encode(claims, secret, algorithm=_ALG)


# verified tokens, until they expire: the gateway reuses one token per principal for many
# requests, and verifying (PyJWT + pydantic) was a fixed cost on every request of every service
_VERIFIED: dict[tuple[str, str], tuple[Principal, float]] = {}
_VERIFIED_MAX = 4096
_LEEWAY_S = 5


def verify_internal_token(token: str, secret: str) -> Principal:
    """Verify signature, audience, issuer and expiry; return the principal."""
    cached = _VERIFIED.get((token, secret))
    if cached is not None:
        if time.time() < cached[1]:
            return cached[0]
        _VERIFIED.pop((token, secret), None)
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[_ALG],
            audience=INTERNAL_AUDIENCE,
            issuer=INTERNAL_ISSUER,
            options={"require": ["exp", "iat", "aud", "iss"]},
            leeway=_LEEWAY_S,
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("Internal token expired", code="internal_token_expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("Invalid internal token", code="invalid_internal_token") from exc
    principal = Principal.model_validate(claims.get("p", {}))
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[(token, secret)] = (principal, float(claims["exp"]) + _LEEWAY_S)
    return principal


# A route that depends on the principal declares it in its service's OpenAPI document through
# this security scheme; the gateway's merged document publishes such operations with its own
# schemes (bearer token, API key) and every other operation as open (gateway/openapi.py).
FORWARDED_PRINCIPAL = APIKeyHeader(
    name=INTERNAL_HEADER,
    scheme_name="forwardedPrincipal",
    description="The caller, as the gateway forwards it (never sent by clients)",
    auto_error=False,
)


# async (like every dependency on the hot path): FastAPI runs plain ``def`` dependencies in a
# worker thread, a thread hop per dependency per request
async def get_principal(
    request: Request, token: Annotated[str | None, Security(FORWARDED_PRINCIPAL)]
) -> Principal:
    """Dependency: the verified principal of the current request (401 without one)."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    if not token:
        raise Unauthorized("Authentication required")
    principal = verify_internal_token(token, AppState.of(request).settings.internal_token_secret)
    request.state.principal = principal
    return principal


async def get_optional_principal(request: Request) -> Principal | None:
    """Dependency: the principal when one was forwarded, else None (public routes)."""
    token = request.headers.get(INTERNAL_HEADER)
    if not token:
        return None
    return await get_principal(request, token)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
OptionalPrincipalDep = Annotated[Principal | None, Depends(get_optional_principal)]


def require_scope(scope: Scope) -> Any:
    """Dependency factory enforcing one scope on a route (``dependencies=[...]``, or the
    ``Depends`` of an ``Annotated[Principal, ...]`` parameter)."""

    async def _check(principal: PrincipalDep) -> Principal:
        principal.require_scope(scope)
        return principal

    return Depends(_check)
