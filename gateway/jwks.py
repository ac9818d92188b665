"""The auth service's public signing keys, cached: access tokens are verified locally."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from libs.errors import ServiceUnavailable

log = logging.getLogger("aistack.gateway.jwks")

# asymmetric only: a symmetric algorithm would let anyone holding the public key sign
ALLOWED_ALGORITHMS = frozenset({"EdDSA", "RS256"})
_KTY_ALG = {("OKP", "Ed25519"): "EdDSA", ("RSA", None): "RS256"}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str
    alg: str
    key: Any


def parse_jwks(doc: Any) -> dict[str, VerificationKey]:
    """The usable signature keys of a JWKS document, by kid (others are skipped)."""
    keys: dict[str, VerificationKey] = {}
    raw_keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(raw_keys, list):
        raise ValueError("JWKS document has no 'keys' list")
    for jwk in raw_keys:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
            continue
        kty = str(jwk.get("kty"))
        alg = _KTY_ALG.get((kty, str(jwk.get("crv")) if kty == "OKP" else None))
        if alg is None or jwk.get("alg", alg) != alg:
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("skipping unusable JWK %s: %s", kid, exc)
            continue
        keys[kid] = VerificationKey(kid, alg, key)
    return keys


class JWKSCache:
    """Keys by kid, refreshed after ``ttl`` and when an unknown kid appears (rotation).

    Refetches are spaced by at least ``min_refetch_interval`` and never run concurrently,
    so a flood of tokens with made-up kids costs the auth service one request per interval.
    """

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        ttl: float = 300.0,
        min_refetch_interval: float = 5.0,
        timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.client = client
        self.ttl = ttl
        self.min_refetch_interval = min_refetch_interval
        self.timeout = timeout
        self._keys: dict[str, VerificationKey] = {}
        self._loaded_at: float | None = None
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> VerificationKey | None:
        """The key with ``kid``, refetching the set when it is unknown or stale."""
        key = self._keys.get(kid)
        now = time.monotonic()
        if key is not None and self._loaded_at is not None and now - self._loaded_at < self.ttl:
            return key
        await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        if time.monotonic() - self._attempted_at < self.min_refetch_interval:
            self._raise_if_never_loaded()
            return
        async with self._lock:
            # whoever held the lock may just have refreshed
            if time.monotonic() - self._attempted_at < self.min_refetch_interval:
                self._raise_if_never_loaded()
                return
            self._attempted_at = time.monotonic()
            self.fetches += 1
            try:
                resp = await self.client.get(self.url, timeout=self.timeout)
                resp.raise_for_status()
                keys = parse_jwks(resp.json())
            except (httpx.HTTPError, ValueError) as exc:
                # keep verifying with the keys we have; without any, say so honestly
                log.warning("JWKS fetch from %s failed: %s", self.url, exc)
                self._raise_if_never_loaded()
                return
            self._keys = keys
            self._loaded_at = time.monotonic()

    def _raise_if_never_loaded(self) -> None:
        if self._loaded_at is None:
            raise ServiceUnavailable(
                "Token verification keys are unavailable",
                code="auth_unavailable",
                details={"service": "auth"},
            )
