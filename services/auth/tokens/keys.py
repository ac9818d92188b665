"""Access tokens are EdDSA (Ed25519) JWTs: their claims, signing, the JWK of a key's public
half, and each process's cached copy of the key that signs now."""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth.models import SigningKey
from services.auth.settings import AuthSettings

ALGORITHM = "EdDSA"
ACTIVE, RETIRING, RETIRED = "active", "retiring", "retired"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: SigningKey) -> dict[str, str]:
    """The JWK (RFC 8037, OKP/Ed25519) of a signing key's public half."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(key.public_key),
        "kid": key.kid,
        "use": "sig",
        "alg": ALGORITHM,
    }


def new_kid() -> str:
    return f"{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(6)}"


@dataclass
class LoadedKey:
    kid: str
    private: Ed25519PrivateKey
    loaded_at: float


class KeyCache:
    """Per-process copy of the active signing key, re-read from the database now and then."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self.current: LoadedKey | None = None

    def get(self) -> LoadedKey | None:
        if self.current and time.monotonic() - self.current.loaded_at < self.ttl:
            return self.current
        return None

    def clear(self) -> None:
        self.current = None


def access_claims(
    settings: AuthSettings,
    *,
    user_id: uuid.UUID,
    org_id: uuid.UUID,
    role: str,
    session_id: uuid.UUID,
    now: int | None = None,
) -> dict[str, Any]:
    """The access token's claims: the contract the gateway verifies."""
    iat = int(time.time()) if now is None else now
    return {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "org": str(org_id),
        "roles": [role],
        "sid": str(session_id),
        "iat": iat,
        "nbf": iat,
        "exp": iat + settings.access_token_ttl,
        "jti": uuid.uuid4().hex,
    }


def sign(claims: dict[str, Any], key: LoadedKey) -> str:
    return jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
