"""A stand-in for the auth service's two gateway-facing endpoints, speaking their contract.

``GET /.well-known/jwks.json`` publishes Ed25519 (and RSA) public keys; tokens are signed
with the matching private keys exactly as the auth service signs access tokens.
``POST /internal/api-keys/introspect`` answers for the keys registered here, and only to a
caller presenting a service principal's internal token.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, generate_private_key
from fastapi import APIRouter, FastAPI, Request
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm
from redis.asyncio import Redis
from starlette.responses import JSONResponse

from gateway.apikeys import CACHE_PREFIX, REVOKED_CHANNEL, key_digest
from libs.identity import INTERNAL_HEADER, verify_internal_token
from libs.settings import DEV_INTERNAL_SECRET

ISSUER = "aistack"
AUDIENCE = "aistack-api"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        algo = OKPAlgorithm if self.alg == "EdDSA" else RSAAlgorithm
        data: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        data.update(kid=self.kid, alg=self.alg, use="sig")
        return data


def ed25519_key(kid: str | None = None) -> SigningKey:
    return SigningKey(kid or f"ed-{secrets.token_hex(4)}", "EdDSA", Ed25519PrivateKey.generate())


def rsa_key(kid: str | None = None) -> SigningKey:
    private: RSAPrivateKey = generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid or f"rsa-{secrets.token_hex(4)}", "RS256", private)


@dataclass
class FakeAuth:
    keys: list[SigningKey] = field(default_factory=lambda: [ed25519_key()])
    api_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    jwks_fetches: int = 0
    introspections: int = 0
    up: bool = True

    @property
    def signing(self) -> SigningKey:
        return self.keys[0]

    def claims(
        self,
        *,
        user_id: uuid.UUID | None = None,
        org_id: uuid.UUID | None = None,
        roles: list[str] | None = None,
        session_id: uuid.UUID | None = None,
        ttl: int = 3600,
        **extra: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(user_id or uuid.uuid4()),
            "org": str(org_id or uuid.uuid4()),
            "roles": roles if roles is not None else ["owner"],
            "sid": str(session_id or uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": secrets.token_hex(8),
        }
        claims.update(extra)
        return claims

    def sign(self, claims: dict[str, Any], key: SigningKey | None = None) -> str:
        key = key or self.signing
        return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})

    def token(self, **kwargs: Any) -> str:
        """An access token as the auth service issues it."""
        return self.sign(self.claims(**kwargs))

    def add_api_key(
        self,
        *,
        scopes: list[str] | None = None,
        org_id: uuid.UUID | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        expires_at: str | None = None,
        plan: str | None = "pro",
        monthly_budget_usd: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        key = "ask_" + secrets.token_urlsafe(30)
        info = {
            "active": True,
            "key_id": str(uuid.uuid4()),
            "org_id": str(org_id or uuid.uuid4()),
            "user_id": str(uuid.uuid4()),
            "scopes": scopes if scopes is not None else ["llm:use"],
            "expires_at": expires_at,
            "rpm_limit": rpm_limit,
            "tpm_limit": tpm_limit,
            "monthly_budget_usd": monthly_budget_usd,
            "plan": plan,
        }
        self.api_keys[key] = info
        return key, info

    async def revoke(self, key: str, redis: Redis, *, publish: bool = True) -> None:
        """Revoke as the auth service does: inactive, cache entry deleted, announced."""
        self.api_keys[key] = {"active": False}
        digest = key_digest(key)
        await redis.delete(CACHE_PREFIX + digest)
        if publish:
            await redis.publish(REVOKED_CHANNEL, digest)

    def router(self) -> APIRouter:
        router = APIRouter()

        @router.get("/.well-known/jwks.json")
        async def jwks() -> JSONResponse:
            self.jwks_fetches += 1
            if not self.up:
                return JSONResponse({"error": {"code": "down"}}, status_code=503)
            return JSONResponse({"keys": [k.jwk() for k in self.keys]})

        @router.post("/internal/api-keys/introspect")
        async def introspect(request: Request) -> JSONResponse:
            self.introspections += 1
            if not self.up:
                return JSONResponse({"error": {"code": "down"}}, status_code=503)
            caller = verify_internal_token(
                request.headers.get(INTERNAL_HEADER, ""), DEV_INTERNAL_SECRET
            )
            assert caller.kind == "service", caller
            body = await request.json()
            return JSONResponse(self.api_keys.get(body["key"], {"active": False}))

        return router

    def app(self) -> FastAPI:
        app = FastAPI()
        app.include_router(self.router())
        return app
