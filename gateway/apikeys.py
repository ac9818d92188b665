"""API keys: introspected at the auth service, cached briefly in-process and in Redis.

Contract with the auth service:

- ``POST {auth}/internal/api-keys/introspect`` with ``{"key": "ask_..."}`` and a service
  principal's internal token answers ``{"active": true, "key_id", "org_id", "user_id",
  "scopes", "expires_at", "rpm_limit", "tpm_limit", "monthly_budget_usd", "plan"}`` or
  ``{"active": false}``.
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

Auth unavailable (down, hung, or its database is): a key that introspection confirmed active
within ``stale_ttl`` seconds (``GATEWAY_API_KEY_STALE_SECONDS``, 300; 0 turns this off) keeps
working, as user tokens do on the cached JWKS, instead of every API call answering
``503 auth_unavailable``. Positive answers stay in Redis that much longer, marked with the
time they stop being fresh (``_fresh_until``); past it a lookup asks auth as before, and only
when auth cannot answer is the stale answer used (its own expiry still applies), and auth asked
again after ``_STALE_RECHECK_S`` (5 s: while auth hangs, one lookup per key and process waits
its timeout that often, not every request). A revoked key is never among them: revoking deletes
the Redis entry and announces it, which drops this process's copies, and nothing can be
revoked while auth is down. (If that announcement is lost just as auth comes back, a key served
stale in the last 5 s works for up to 5 s more, where the bound is otherwise one second.)
Counted in ``aistack_gateway_api_key_stale_total``.
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
from decimal import Decimal
from typing import Any

import httpx
import orjson
from prometheus_client import Counter
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
# while auth cannot answer, a key served from a stale answer is asked about again after this
_STALE_RECHECK_S = 5.0

STALE_SERVED = Counter(
    "aistack_gateway_api_key_stale_total",
    "API key lookups answered from an answer past its freshness because the auth service "
    "could not be asked (GATEWAY_API_KEY_STALE_SECONDS)",
)


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
    monthly_budget_usd: Decimal | None = None
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
                monthly_budget_usd=_opt_decimal(data.get("monthly_budget_usd")),
                plan=str(data["plan"]) if data.get("plan") else None,
                raw=data,
            )
        except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
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
                    monthly_budget_usd=self.monthly_budget_usd,
                ),
            )
        assert self._principal is not None
        return self._principal


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    out = Decimal(str(value))
    if not out.is_finite() or out < 0:
        raise ValueError(f"not a budget: {value!r}")
    return out


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
        stale_ttl: int = 0,
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
        self.stale_ttl = stale_ttl
        self.timeout = timeout
        self._local: dict[str, tuple[float, KeyInfo]] = {}
        # the last active answer per key and until when (monotonic) it may stand in for auth
        self._last_good: dict[str, tuple[float, KeyInfo]] = {}
        self._stale_logged_at = float("-inf")
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
        self._last_good.pop(digest, None)
        self._revoked[digest] = time.monotonic() + self.cache_ttl + 5
        if len(self._revoked) > _MAX_LOCAL:
            now = time.monotonic()
            self._revoked = {d: t for d, t in self._revoked.items() if t > now}

    def forget_all(self) -> None:
        self._local.clear()
        self._last_good.clear()

    def _recently_revoked(self, digest: str) -> bool:
        until = self._revoked.get(digest)
        return until is not None and until > time.monotonic()

    async def _load(self, digest: str, key: str) -> KeyInfo:
        info: KeyInfo | None = None
        stale: KeyInfo | None = None
        cache_key = CACHE_PREFIX + digest
        if self.redis is not None and self.guard is not None:
            try:
                raw = await self.guard.run("gateway_api_key_cache", self.redis.get(cache_key))
            except (RedisError, OSError) as exc:
                self._log_redis("API key cache read failed, asking auth: %s", exc)
                raw = None
            if raw is not None:
                try:
                    data = orjson.loads(raw)
                    info = KeyInfo.from_json(data)
                except orjson.JSONDecodeError:
                    info = None
                if info is not None and info.active and self._recently_revoked(digest):
                    info = None
                if info is not None and info.active and isinstance(data, dict):
                    fresh_until = data.get("_fresh_until")
                    if isinstance(fresh_until, int | float) and time.time() >= fresh_until:
                        stale, info = info, None  # ask auth; this stands in if it cannot answer
        if info is None:
            try:
                info = await self._introspect(key)
            except ServiceUnavailable:
                fallback = self._stale_answer(digest, stale)
                if fallback is None:
                    raise
                self._remember(digest, fallback, min(_STALE_RECHECK_S, self.stale_ttl))
                return fallback
            await self._store(cache_key, digest, info)
        self._remember(digest, info)
        return info

    def _stale_answer(self, digest: str, from_redis: KeyInfo | None) -> KeyInfo | None:
        """An active answer to stand in while auth cannot answer, or None."""
        if self.stale_ttl <= 0 or self._recently_revoked(digest):
            return None
        info = from_redis
        if info is None:
            entry = self._last_good.get(digest)
            if entry is not None and entry[0] > time.monotonic():
                info = entry[1]
        if info is None or info.expired():
            return None
        STALE_SERVED.inc()
        now = time.monotonic()
        if now - self._stale_logged_at >= _LOG_EVERY:
            self._stale_logged_at = now
            log.warning(
                "auth unavailable: API keys it confirmed in the last %d s keep working",
                self.stale_ttl,
            )
        return info

    async def _store(self, cache_key: str, digest: str, info: KeyInfo) -> None:
        if self.redis is None or self.guard is None or not self.guard.up:
            return  # no Redis (or skipped while it is down): the next lookup asks auth again
        if info.active and self._recently_revoked(digest):
            return
        value = info.raw
        if info.active and self.stale_ttl > 0:
            # kept past its freshness, to stand in while auth cannot answer (see the module)
            ttl = self.cache_ttl + self.stale_ttl
            value = {**value, "_fresh_until": time.time() + self.cache_ttl}
        else:
            ttl = self.cache_ttl if info.active else self.negative_ttl
        try:
            await self.guard.run(
                "gateway_api_key_cache", self.redis.set(cache_key, orjson.dumps(value), ex=ttl)
            )
        except (RedisError, OSError) as exc:
            self._log_redis("API key cache write failed: %s", exc)

    def _log_redis(self, text: str, exc: BaseException) -> None:
        # once per interval: during an outage every lookup fails the same way
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            log.warning(text, exc)

    def _remember(self, digest: str, info: KeyInfo, ttl: float | None = None) -> None:
        now = time.monotonic()
        self._local = _bounded(self._local, now)
        self._local[digest] = (now + (self.local_ttl if ttl is None else ttl), info)
        if self.stale_ttl > 0 and ttl is None:  # an answer from auth or its fresh cache
            if info.active:
                self._last_good = _bounded(self._last_good, now)
                self._last_good[digest] = (now + self.stale_ttl, info)
            else:
                self._last_good.pop(digest, None)

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


def _bounded(
    entries: dict[str, tuple[float, KeyInfo]], now: float
) -> dict[str, tuple[float, KeyInfo]]:
    """``entries`` with room for one more: expired ones dropped, all of them if still full."""
    if len(entries) < _MAX_LOCAL:
        return entries
    entries = {d: e for d, e in entries.items() if e[0] > now}
    return entries if len(entries) < _MAX_LOCAL else {}


def _auth_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "API key verification is unavailable",
        code="auth_unavailable",
        details={"service": "auth"},
    )
