"""Where chat keeps results to answer again: the response cache and idempotency keys, both in
Redis and both scoped per organization (:class:`ResultStore`, over the commands below).

Cache: exact match on everything that shapes the answer (alias, messages, parameters), for
deterministic requests only; a streamed request is served from the same entry (replayed as
chunks). Idempotency: the first request with a key claims it (``SET NX``), stores its
result when done and every retry with that key gets that result; a retry arriving while the
first is still running waits for it (bounded) and then gets 409.

Redis unavailable (down or hung; :mod:`libs.redis` skips it after one failed call):

- the response cache is skipped: a lookup is a miss, a write is dropped. The cache saves cost
  and latency; it is never the only copy of anything.
- an ``Idempotency-Key`` request is refused with 503 ``idempotency_unavailable`` and a
  Retry-After, *before* anything runs. Running it without the claim would break the one
  promise the key makes: a client that retries (what the key is for, and what the OpenAI SDKs
  do on their own after a timeout) would get a second completion, billed twice, perhaps
  appended twice to a conversation. A 503 is retried by those same SDKs, honouring
  Retry-After. Requests without a key are not affected.
- a result that cannot be stored after the call (Redis went away meanwhile) is written when
  Redis is back, if that is within :data:`SETTLE_WAIT_S`; otherwise the key stays claimed
  ("pending") until its lock expires and retries get 409 ``idempotency_key_in_progress``:
  never a silent second run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis

from libs.errors import BadRequest, Conflict, ServiceUnavailable, ValidationFailed
from libs.redis import RedisGuard, RedisUnavailable
from services.llm.routing.config import Target
from services.llm.settings import LlmSettings

T = TypeVar("T")

log = logging.getLogger("aistack.llm")

CACHE_PREFIX = "llm:cache:"
IDEM_PREFIX = "llm:idem:"
_PENDING = b"pending"
# how long a finished request's idempotent result waits for Redis to come back to be stored
SETTLE_WAIT_S = 10.0

# request fields that do not change the answer
_NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "cache", "timeout"})


def fingerprint(endpoint: str, body: dict[str, Any]) -> str:
    """A stable hash of what determines the response of a request body."""
    material = {k: v for k, v in body.items() if k not in _NOT_IN_KEY}
    raw = orjson.dumps([endpoint, material], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


def cache_key(org_id: uuid.UUID, fp: str) -> str:
    return f"{CACHE_PREFIX}{org_id}:{fp}"


async def cache_get(redis: Redis, key: str) -> dict[str, Any] | None:
    raw = await redis.get(key)
    if raw is None:
        return None
    value: dict[str, Any] = orjson.loads(raw)
    return value


async def cache_put(redis: Redis, key: str, value: dict[str, Any], ttl_s: int) -> None:
    await redis.set(key, orjson.dumps(value), ex=max(ttl_s, 1))


@dataclass
class IdempotencyClaim:
    """What :func:`idempotency_claim` found: either ours to run, or a stored result."""

    key: str
    fingerprint: str
    owner: bool
    result: dict[str, Any] | None = None


def idempotency_redis_key(org_id: uuid.UUID, header: str) -> str:
    digest = hashlib.sha256(header.encode()).hexdigest()
    return f"{IDEM_PREFIX}{org_id}:{digest}"


async def _guarded(guard: RedisGuard | None, aw: Awaitable[T]) -> T:
    return await (aw if guard is None else guard.run("llm_idempotency", aw))


async def idempotency_claim(
    redis: Redis,
    key: str,
    fp: str,
    *,
    lock_ttl_s: float,
    wait_s: float,
    guard: RedisGuard | None = None,
) -> IdempotencyClaim:
    """Claim ``key`` for this request, or return the stored result of the first one.

    With ``guard``, each Redis call has its deadline and raises
    :class:`libs.redis.RedisUnavailable` when Redis is down or hung."""
    deadline = time.monotonic() + wait_s
    delay = 0.02
    px = max(int(lock_ttl_s * 1000), 1000)
    while True:
        claimed = await _guarded(guard, redis.set(key, _PENDING, nx=True, px=px))
        if claimed:
            return IdempotencyClaim(key, fp, owner=True)
        raw = await _guarded(guard, redis.get(key))
        if raw is None:
            continue  # released between our SET and GET: try to claim again
        if raw != _PENDING:
            stored: dict[str, Any] = orjson.loads(raw)
            if stored.get("fingerprint") != fp:
                raise ValidationFailed(
                    "This Idempotency-Key was already used with a different request body",
                    code="idempotency_key_reused",
                )
            return IdempotencyClaim(key, fp, owner=False, result=stored)
        if time.monotonic() >= deadline:
            raise Conflict(
                "A request with this Idempotency-Key is still in progress",
                code="idempotency_key_in_progress",
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


async def idempotency_store(
    redis: Redis, claim: IdempotencyClaim, result: dict[str, Any], ttl_s: int
) -> None:
    """Keep the first result for retries of the same key."""
    value = {"fingerprint": claim.fingerprint, **result}
    await redis.set(claim.key, orjson.dumps(value), ex=max(ttl_s, 1))


async def idempotency_release(redis: Redis, claim: IdempotencyClaim) -> None:
    """The first request failed: let a retry run again instead of replaying the failure."""
    if claim.owner:
        # only delete our own pending marker, never a stored result
        current = await redis.get(claim.key)
        if current == _PENDING:
            await redis.delete(claim.key)


class ResultStore:
    """The response cache and idempotency keys as a call uses them: Redis down or hung
    (:mod:`libs.redis`'s guard) is a cache miss and a dropped cache write, an idempotent call
    refused before it runs, and a result written once Redis is back (see the module's
    docstring). Writes run off the response path through ``spawn``."""

    def __init__(
        self,
        settings: LlmSettings,
        redis: Redis,
        guard: RedisGuard,
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.guard = guard
        self.spawn = spawn

    # ------------------------------------------------------------------ response cache

    async def cached(self, key: str) -> dict[str, Any] | None:
        """The cached value of ``key``; a miss while Redis is down or hung."""
        try:
            return await self.guard.run("llm_cache", cache_get(self.redis, key))
        except RedisUnavailable:
            return None

    def cache_completion(self, key: str, completion: dict[str, Any], target: Target) -> None:
        """Cache a chat completion (and who answered it), off the response path."""
        value = {"completion": completion, "provider": target.provider, "model": target.model}
        self.remember(key, value)

    def remember(self, key: str, value: dict[str, Any]) -> None:
        """Cache ``value`` under ``key``, off the response path."""
        self.spawn(self._cache_write(key, value))

    async def _cache_write(self, key: str, value: dict[str, Any]) -> None:
        try:
            await self.guard.run(
                "llm_cache", cache_put(self.redis, key, value, self.settings.cache_ttl_s)
            )
        except RedisUnavailable:
            pass  # dropped while Redis is down (counted in aistack_redis_fallbacks)
        except Exception:
            log.warning("response cache write failed", exc_info=True)

    # ------------------------------------------------------------------ idempotency keys

    async def claim(
        self, org_id: uuid.UUID, idempotency_key: str | None, fp: str | None
    ) -> IdempotencyClaim | None:
        """The call's claim on its ``Idempotency-Key`` (None without one): ours to run, or
        the stored result of the first call with that key."""
        if not idempotency_key:
            return None
        assert fp is not None
        if len(idempotency_key) > 255:
            raise BadRequest("Idempotency-Key is longer than 255 characters")
        key = idempotency_redis_key(org_id, idempotency_key)
        try:
            return await idempotency_claim(
                self.redis,
                key,
                fp,
                lock_ttl_s=self.settings.max_request_timeout_s + 30,
                wait_s=self.settings.idempotency_wait_s,
                guard=self.guard,
            )
        except RedisUnavailable as exc:
            # fail closed, before anything runs: without the claim a retry would run twice
            # (see the module's docstring); SDKs retry a 503 after Retry-After
            raise ServiceUnavailable(
                "Idempotency keys are unavailable right now; the request was not run, retry "
                "shortly",
                code="idempotency_unavailable",
                headers={"Retry-After": str(max(1, math.ceil(self.guard.retry_s)))},
            ) from exc

    def settle(self, claim: IdempotencyClaim | None, result: dict[str, Any] | None) -> None:
        """Store the result under the idempotency key (or free the key after a failure)."""
        if claim is None or not claim.owner:
            return
        self.spawn(self._settle_write(claim, result))

    async def _settle_write(self, claim: IdempotencyClaim, result: dict[str, Any] | None) -> None:
        # Redis away since the claim: wait (bounded) for it to come back rather than leave the
        # key "pending" until its lock expires (retries get 409 meanwhile, never a second run)
        deadline = time.monotonic() + SETTLE_WAIT_S
        while True:
            if not await self.guard.wait_up(deadline - time.monotonic()):
                log.error("idempotency key %s left pending: Redis unavailable", claim.key)
                return
            if result is None:
                write = idempotency_release(self.redis, claim)
            else:
                ttl = self.settings.idempotency_ttl_s
                write = idempotency_store(self.redis, claim, result, ttl)
            try:
                await self.guard.run("llm_idempotency", write)
                return
            except RedisUnavailable:
                await asyncio.sleep(0.05)  # went down just now: wait for the probe
            except Exception:
                log.error("idempotency key %s left pending", claim.key, exc_info=True)
                return
