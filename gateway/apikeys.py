"""API keys: introspected at the auth service, cached briefly in-process and in Redis.

Contract with the auth service:

- ``POST {auth}/internal/api-keys/introspect`` with ``{"key": "ask_..."}`` and a service
  principal's internal token answers ``{"active": true, "key_id", "org_id", "user_id",
  "scopes", "expires_at", "rpm_limit", "tpm_limit", "plan"}`` or ``{"active": false}``.
- The answer is cached in Redis under ``aistack:apikey:<sha256 hex of the key>``. On revoke,
  auth deletes that key and publishes the sha256 hex on ``aistack:apikey:revoked``; every
  gateway drops its in-process entry at once. In-process entries live at most one second,
  so even a missed message leaves a revoked key usable for under a second.

Redis unavailable (down or hung; :mod:`libs.redis` skips it after one failed call for every
caller): the Redis cache is skipped, not waited on, and every lookup goes to introspection,
which is authoritative (the auth service answers it from its database, without Redis). This
fails neither open nor closed: a revoked key is refused as soon as its in-process entry
(<= 1 s) expires, and a valid key keeps working as long as the auth service answers. The cost
is one introspection per key per ``local_ttl`` per process (concurrent lookups of one key
share it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.errors import ServiceUnavailable
from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.redis import guard_for

log = logging.getLogger("aistack.gateway.apikeys")

API_KEY_PREFIX = "ask_"
CACHE_PREFIX = "aistack:apikey:"
REVOKED_CHANNEL = "aistack:apikey:revoked"
INTROSPECT_PATH = "/internal/api-keys/introspect"
# "ask_" + 40 random characters; a little leeway in length, none in alphabet
_KEY_RE = re.compile(r"^ask_[A-Za-z0-9_-]{20,128}$")
_MAX_LOCAL = 50_000
_LOG_EVERY = 10.0


def looks_like_api_key(value: str) -> bool:
    """True for a string shaped like an aistack API key (JWTs never are)."""
    return _KEY_RE.match(value) is not None


def key_digest(key: str) -> str:
    """sha256 hex of the full key: the cache and revocation id."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What introspection says about one key."""

    active: bool
    key_id: uuid.UUID | None = None
    org_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    scopes: tuple[str, ...] = ()
    expires_at: datetime | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    plan: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # built once per cached answer, not per request
    _principal: Principal | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> KeyInfo:
        if not isinstance(data, dict) or data.get("active") is not True:
            return cls(active=False, raw={"active": False})
        try:
            expires = data.get("expires_at")
            return cls(
                active=True,
                key_id=uuid.UUID(str(data["key_id"])),
                org_id=uuid.UUID(str(data["org_id"])),
                user_id=uuid.UUID(str(data["user_id"])) if data.get("user_id") else None,
                scopes=tuple(str(s) for s in data.get("scopes") or ()),
                expires_at=_parse_time(expires) if expires else None,
                rpm_limit=_opt_int(data.get("rpm_limit")),
                tpm_limit=_opt_int(data.get("tpm_limit")),
                plan=str(data["plan"]) if data.get("plan") else None,
                raw=data,
            )
        except (KeyError, ValueError, TypeError) as exc:
            log.error("malformed introspection answer (%s); treating key as inactive", exc)
            return cls(active=False, raw={"active": False})

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))

    def principal(self) -> Principal:
        """The principal this key acts as (shared: treat it as read-only)."""
        if self._principal is None:
            object.__setattr__(
                self,
                "_principal",
                Principal(
                    user_id=self.user_id,
                    org_id=self.org_id,
                    scopes=list(self.scopes),
                    key_id=self.key_id,
                    plan=self.plan,
                    rpm_limit=self.rpm_limit,
                    tpm_limit=self.tpm_limit,
                ),
            )
        assert self._principal is not None
        return self._principal


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _parse_time(value: Any) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class ApiKeyResolver:
    """Resolve a key to :class:`KeyInfo`: in-process (<= 1 s), Redis, then introspection."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        auth_url: str,
        internal_secret: str,
        redis: Redis | None,
        local_ttl: float = 0.5,
        cache_ttl: int = 30,
        negative_ttl: int = 5,
        timeout: float = 2.0,
    ) -> None:
        self.client = client
        self.url = auth_url.rstrip("/") + INTROSPECT_PATH
        self.secret = internal_secret
        self.redis = redis
        self.guard = guard_for(redis) if redis is not None else None
        self.local_ttl = min(local_ttl, 1.0)
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self.timeout = timeout
        self._local: dict[str, tuple[float, KeyInfo]] = {}
        self._inflight: dict[str, asyncio.Future[KeyInfo]] = {}
        # revoked here recently: a cache entry written by a lookup racing the revocation
        # must not bring the key back
        self._revoked: dict[str, float] = {}
        self._token: tuple[float, str] = (0.0, "")
        self._logged_at = float("-inf")
        self.introspections = 0

    async def resolve(self, key: str) -> KeyInfo:
        """What the auth service says about ``key`` (possibly cached for a moment)."""
        digest = key_digest(key)
        entry = self._local.get(digest)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        task = asyncio.ensure_future(self._load(digest, key))
        self._inflight[digest] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._inflight.pop(digest, None)
            else:
                task.add_done_callback(lambda _: self._inflight.pop(digest, None))

    def forget(self, digest: str) -> None:
        """Drop a key from the in-process cache (it was revoked)."""
        self._local.pop(digest, None)
        self._revoked[digest] = time.monotonic() + self.cache_ttl + 5
        if len(self._revoked) > _MAX_LOCAL:
            now = time.monotonic()
            self._revoked = {d: t for d, t in self._revoked.items() if t > now}

    def forget_all(self) -> None:
        self._local.clear()

    def _recently_revoked(self, digest: str) -> bool:
        until = self._revoked.get(digest)
        return until is not None and until > time.monotonic()

    async def _load(self, digest: str, key: str) -> KeyInfo:
        info: KeyInfo | None = None
        cache_key = CACHE_PREFIX + digest
        if self.redis is not None and self.guard is not None:
            try:
                raw = await self.guard.run("gateway_api_key_cache", self.redis.get(cache_key))
            except (RedisError, OSError) as exc:
                self._log_redis("API key cache read failed, asking auth: %s", exc)
                raw = None
            if raw is not None:
                try:
                    info = KeyInfo.from_json(orjson.loads(raw))
                except orjson.JSONDecodeError:
                    info = None
                if info is not None and info.active and self._recently_revoked(digest):
                    info = None
        if info is None:
            info = await self._introspect(key)
            await self._store(cache_key, digest, info)
        self._remember(digest, info)
        return info

    async def _store(self, cache_key: str, digest: str, info: KeyInfo) -> None:
        if self.redis is None or self.guard is None or not self.guard.up:
            return  # no Redis (or skipped while it is down): the next lookup asks auth again
        if info.active and self._recently_revoked(digest):
            return
        ttl = self.cache_ttl if info.active else self.negative_ttl
        try:
            await self.guard.run(
                "gateway_api_key_cache", self.redis.set(cache_key, orjson.dumps(info.raw), ex=ttl)
            )
        except (RedisError, OSError) as exc:
            self._log_redis("API key cache write failed: %s", exc)

    def _log_redis(self, text: str, exc: BaseException) -> None:
        # once per interval: during an outage every lookup fails the same way
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            log.warning(text, exc)

    def _remember(self, digest: str, info: KeyInfo) -> None:
        if len(self._local) >= _MAX_LOCAL:
            now = time.monotonic()
            self._local = {d: e for d, e in self._local.items() if e[0] > now}
            if len(self._local) >= _MAX_LOCAL:
                self._local.clear()
        self._local[digest] = (time.monotonic() + self.local_ttl, info)

    def _service_token(self) -> str:
        expires, token = self._token
        if time.monotonic() < expires:
            return token
        token = sign_internal_token(Principal(), self.secret, 60)
        self._token = (time.monotonic() + 30, token)
        return token

    async def _introspect(self, key: str) -> KeyInfo:
        self.introspections += 1
        try:
            resp = await self.client.post(
                self.url,
                json={"key": key},
                headers={INTERNAL_HEADER: self._service_token()},
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            log.warning("API key introspection failed: %s", type(exc).__name__)
            raise _auth_unavailable() from exc
        if resp.status_code != 200:
            log.warning("API key introspection answered %s", resp.status_code)
            raise _auth_unavailable()
        try:
            return KeyInfo.from_json(resp.json())
        except ValueError as exc:
            raise _auth_unavailable() from exc


def _auth_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "API key verification is unavailable",
        code="auth_unavailable",
        details={"service": "auth"},
    )
