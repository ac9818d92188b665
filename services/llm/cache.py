"""Response cache and idempotency keys, both in Redis and both scoped per organization.

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
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis

from libs.errors import Conflict, ValidationFailed
from libs.redis import RedisGuard

T = TypeVar("T")

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
