"""Signing keys: created on first use, rotated by platform admins, published as the JWKS."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth.core.context import AuthContext, utcnow
from services.auth.core.feature_service import FeatureService
from services.auth.core.security import Cipher
from services.auth.models import SigningKey
from services.auth.tokens.keys import (
    ACTIVE,
    ALGORITHM,
    RETIRING,
    KeyCache,
    LoadedKey,
    access_claims,
    new_kid,
    public_jwk,
    sign,
)
from services.auth.tokens.repository import SigningKeyRepository

# keeps old keys in the JWKS a little longer than their last token lives (clock skew, caches)
RETIRE_MARGIN_S = 120


class TokenService(FeatureService):
    def __init__(self, ctx: AuthContext, cache: KeyCache) -> None:
        super().__init__(ctx)
        self.cache = cache
        self.keys = SigningKeyRepository(ctx.session)
        self.cipher = Cipher(ctx.settings.key_encryption_secret)

    async def access_token(
        self, *, user_id: uuid.UUID, org_id: uuid.UUID, role: str, session_id: uuid.UUID
    ) -> str:
        key = await self._signing_key()
        claims = access_claims(
            self.settings, user_id=user_id, org_id=org_id, role=role, session_id=session_id
        )
        return sign(claims, key)

    async def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k) for k in await self._published()]}

    async def rotate_signing_key(self) -> SigningKey:
        await self.require_platform_admin()
        new, old = await self._rotate()
        await self.audit(
            "signing_key.rotated",
            target_type="signing_key",
            target_id=new.kid,
            details={"retiring": [k.kid for k in old]},
        )
        return new

    async def list_signing_keys(self) -> list[SigningKey]:
        await self.require_platform_admin()
        return await self.keys.latest()

    async def _create(self) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        return await self.keys.add(
            SigningKey(
                kid=new_kid(),
                algorithm=ALGORITHM,
                public_key=private.public_key().public_bytes_raw(),
                private_key_enc=self.cipher.encrypt(private.private_bytes_raw()),
                status=ACTIVE,
            )
        )

    async def _signing_key(self) -> LoadedKey:
        """The key that signs now; the first one is created on first use."""
        cached = self.cache.get()
        if cached:
            return cached
        row = await self.keys.active()
        if row is None:
            # two processes starting together must not both create a key
            await self.keys.lock()
            row = await self.keys.active() or await self._create()
        loaded = LoadedKey(
            kid=row.kid,
            private=Ed25519PrivateKey.from_private_bytes(self.cipher.decrypt(row.private_key_enc)),
            loaded_at=time.monotonic(),
        )
        self.cache.current = loaded
        return loaded

    async def _rotate(self) -> tuple[SigningKey, list[SigningKey]]:
        """A new key signs from now on; the previous ones keep verifying until their tokens
        (and every process's cached copy of them) have expired."""
        await self.keys.lock()
        now = utcnow()
        keep_until = now + timedelta(
            seconds=self.settings.access_token_ttl
            + self.settings.signing_key_cache_seconds
            + RETIRE_MARGIN_S
        )
        old = await self.keys.all_active()
        for key in old:
            key.status = RETIRING
            key.retiring_at = now
            key.retire_after = keep_until
        await self.keys.retire_expired(now)
        new = await self._create()
        self.cache.clear()
        return new, old

    async def _published(self) -> list[SigningKey]:
        keys = await self.keys.verifying(utcnow())
        if not any(k.status == ACTIVE for k in keys):
            await self._signing_key()
            return await self._published()
        return keys
