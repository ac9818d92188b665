"""Entitlements: what an organization's plan allows, published by billing to Redis for the
hot path (the gateway's request limits, the llm's token limits and budgets).

Billing writes ``aistack:entitlements:<org_id>`` (JSON of :class:`Entitlements`) whenever an
organization's subscription is made or changes, and ``aistack:entitlements:default`` (its
default plan's, for organizations it has not seen yet) at start. Readers go through
:class:`EntitlementsCache`: one GET per organization every ``ttl_s`` at most, so a plan change
reaches every process within that many seconds; Redis unreachable keeps the last value read
(or none: the reader's own settings apply).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from decimal import Decimal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("aistack.entitlements")

PREFIX = "aistack:entitlements"
DEFAULT_KEY = f"{PREFIX}:default"


def entitlements_key(org_id: uuid.UUID | str) -> str:
    return f"{PREFIX}:{org_id}"


class Limits(BaseModel):
    """A plan's limits (None: unlimited)."""

    model_config = ConfigDict(extra="ignore")

    rpm: int | None = Field(default=None, ge=1, description="Requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute")
    monthly_spend_usd: Decimal | None = Field(default=None, ge=0, description="Spend budget")
    monthly_tokens: int | None = Field(default=None, ge=0, description="Token budget")
    storage_bytes: int | None = Field(default=None, ge=0, description="Files and vectors kept")
    vector_stores: int | None = Field(default=None, ge=0)
    seats: int | None = Field(default=None, ge=1)
    batch_jobs: int | None = Field(default=None, ge=0, description="Batch jobs at once")


class Entitlements(BaseModel):
    """What an organization may use now (its plan's, as its subscription's state allows)."""

    model_config = ConfigDict(extra="ignore")

    plan: str
    status: str = "active"
    features: list[str] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    overage: str = Field(default="block", description="block or allow (billed at period end)")
    # the budget period (UTC, ISO); a budget's reservations are counted per period
    period_start: str | None = None

    def dumps(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


async def publish(redis: Redis, org_id: uuid.UUID | None, ent: Entitlements) -> None:
    """Write an organization's entitlements (``org_id`` None: the default ones)."""
    await redis.set(DEFAULT_KEY if org_id is None else entitlements_key(org_id), ent.dumps())


class EntitlementsUnavailable(Exception):
    """Redis did not answer in time and nothing is known of the organization yet."""


class EntitlementsCache:
    """Per-process cache of entitlements read from Redis (see the module's docstring). A read
    Redis does not answer within ``timeout_s`` keeps the last value known; with none known,
    :meth:`get` raises :class:`EntitlementsUnavailable` (the caller decides: a limit falls
    back to its setting, a budget is refused when it must not overshoot)."""

    def __init__(
        self,
        redis: Redis,
        ttl_s: float = 5.0,
        max_orgs: int = 100_000,
        timeout_s: float = 0.25,
    ) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_orgs = max_orgs
        self._cache: dict[str, tuple[float, Entitlements | None]] = {}
        # one read per organization at a time: concurrent requests share it (a burst of
        # requests of one organization must not become a burst of reads)
        self._reading: dict[str, asyncio.Future[Entitlements | None]] = {}

    def forget(self) -> None:
        self._cache.clear()

    async def get(self, org_id: uuid.UUID) -> Entitlements | None:
        """The organization's entitlements, else the default ones, else None."""
        key = str(org_id)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        reading = self._reading.get(key)
        if reading is not None:
            return await asyncio.shield(reading)
        future: asyncio.Future[Entitlements | None] = asyncio.get_running_loop().create_future()
        self._reading[key] = future
        try:
            ent = await self._read(org_id, hit)
        except BaseException as exc:
            # the others get what this read got; a reader cancelled (its request gone) is
            # no answer for them: unavailable, and their callers' policy applies
            shared = exc if isinstance(exc, Exception) else EntitlementsUnavailable("cancelled")
            future.set_exception(shared)
            future.exception()  # marked retrieved: there may be no other reader
            raise
        else:
            future.set_result(ent)
            return ent
        finally:
            del self._reading[key]

    async def _read(
        self, org_id: uuid.UUID, hit: tuple[float, Entitlements | None] | None
    ) -> Entitlements | None:
        key = str(org_id)
        now = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                own, default = await self.redis.mget(entitlements_key(org_id), DEFAULT_KEY)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("entitlements of %s not read (%s)", org_id, exc)
            if hit is None:
                raise EntitlementsUnavailable(str(exc) or type(exc).__name__) from exc
            return hit[1]
        raw = own or default
        ent = None
        if raw:
            try:
                ent = Entitlements.model_validate_json(raw)
            except ValueError:
                log.warning("entitlements of %s unreadable", org_id)
        if len(self._cache) >= self.max_orgs:
            self._cache.clear()
        self._cache[key] = (now, ent)
        return ent
