"""Access tokens: EdDSA (Ed25519) JWTs signed by rotating keys published as a JWKS."""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.models import SigningKey
from services.auth.security import Cipher
from services.auth.settings import AuthSettings

ALGORITHM = "EdDSA"
ACTIVE, RETIRING, RETIRED = "active", "retiring", "retired"
# keeps old keys in the JWKS a little longer than their last token lives (clock skew, caches)
RETIRE_MARGIN_S = 120
_LOCK_ID = 0x617574686B6579  # pg advisory lock: one signing key created at a time


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


def _new_kid() -> str:
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


class SigningKeys:
    """Creates, rotates and loads signing keys."""

    def __init__(self, session: AsyncSession, settings: AuthSettings, cache: KeyCache) -> None:
        self.session = session
        self.settings = settings
        self.cache = cache
        self.cipher = Cipher(settings.key_encryption_secret)

    async def _create(self) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        key = SigningKey(
            kid=_new_kid(),
            algorithm=ALGORITHM,
            public_key=private.public_key().public_bytes_raw(),
            private_key_enc=self.cipher.encrypt(private.private_bytes_raw()),
            status=ACTIVE,
        )
        self.session.add(key)
        await self.session.flush()
        return key

    async def _active_row(self) -> SigningKey | None:
        stmt = (
            select(SigningKey)
            .where(SigningKey.status == ACTIVE)
            .order_by(SigningKey.created_at.desc())
            .limit(1)
        )
        return (await self.session.scalars(stmt)).first()

    async def active(self) -> LoadedKey:
        """The key that signs now; the first one is created on first use."""
        cached = self.cache.get()
        if cached:
            return cached
        row = await self._active_row()
        if row is None:
            # two processes starting together must not both create a key
            await self.session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            row = await self._active_row() or await self._create()
        loaded = LoadedKey(
            kid=row.kid,
            private=Ed25519PrivateKey.from_private_bytes(self.cipher.decrypt(row.private_key_enc)),
            loaded_at=time.monotonic(),
        )
        self.cache.current = loaded
        return loaded

    async def rotate(self) -> tuple[SigningKey, list[SigningKey]]:
        """A new key signs from now on; the previous ones keep verifying until their tokens
        (and every process's cached copy of them) have expired."""
        await self.session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        now = datetime.now(UTC)
        keep_until = now + timedelta(
            seconds=self.settings.access_token_ttl
            + self.settings.signing_key_cache_seconds
            + RETIRE_MARGIN_S
        )
        old = list(
            (
                await self.session.scalars(select(SigningKey).where(SigningKey.status == ACTIVE))
            ).all()
        )
        for key in old:
            key.status = RETIRING
            key.retiring_at = now
            key.retire_after = keep_until
        await self._retire_expired(now)
        new = await self._create()
        self.cache.clear()
        return new, old

    async def _retire_expired(self, now: datetime) -> None:
        await self.session.execute(
            update(SigningKey)
            .where(SigningKey.status == RETIRING, SigningKey.retire_after <= now)
            .values(status=RETIRED)
        )

    async def published(self) -> list[SigningKey]:
        """Keys whose tokens may still be valid: the active one and retiring ones."""
        now = datetime.now(UTC)
        stmt = (
            select(SigningKey)
            .where(
                (SigningKey.status == ACTIVE)
                | ((SigningKey.status == RETIRING) & (SigningKey.retire_after > now))
            )
            .order_by(SigningKey.created_at.desc())
        )
        keys = list((await self.session.scalars(stmt)).all())
        if not any(k.status == ACTIVE for k in keys):
            await self.active()
            return await self.published()
        return keys

    async def all(self) -> list[SigningKey]:
        stmt = select(SigningKey).order_by(SigningKey.created_at.desc()).limit(100)
        return list((await self.session.scalars(stmt)).all())


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
