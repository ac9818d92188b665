"""The organization's plan limits that rag enforces (storage bytes, vector stores; a frozen
account's uploads and ingestion), read from the entitlements billing publishes to Redis
(libs/entitlements.py)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from libs.entitlements import EntitlementsCache, EntitlementsUnavailable
from libs.errors import AccountFrozen
from services.rag.settings import RagSettings

log = logging.getLogger("aistack.rag.plan")


@dataclass(frozen=True)
class OrgLimits:
    """What one organization may keep (None: unlimited, as its plan says)."""

    storage_bytes: int | None
    vector_stores: int | None
    source: str  # "plan" or "settings"
    # the subscription is past due past its grace period (billing's "frozen")
    frozen: bool = False

    def require_active(self) -> None:
        """Refuse what writes or embeds (uploads, ingestion) while the account is frozen."""
        if self.frozen:
            raise AccountFrozen()


class PlanLimits:
    """One per process: an organization's limits are its plan's when billing published
    entitlements (its own or the default plan's), else rag's settings (billing not
    deployed). The read is bounded (the cache's timeout); Redis not answering keeps the
    plan last read, and with none known the settings apply: an upload must not fail
    because Redis does, and the settings are a finite ceiling of their own."""

    def __init__(self, redis: Redis, settings: RagSettings) -> None:
        self.settings = settings
        self.cache = EntitlementsCache(redis, settings.entitlements_ttl_seconds)

    def from_settings(self) -> OrgLimits:
        s = self.settings
        return OrgLimits(s.org_max_storage_bytes, s.org_max_vector_stores, "settings")

    async def of(self, org_id: uuid.UUID) -> OrgLimits:
        try:
            ent = await self.cache.get(org_id)
        except EntitlementsUnavailable as exc:
            log.warning("plan of %s unknown (Redis: %s); rag's settings apply", org_id, exc)
            return self.from_settings()
        if ent is None:
            return self.from_settings()
        frozen = ent.status == "frozen"
        return OrgLimits(ent.limits.storage_bytes, ent.limits.vector_stores, "plan", frozen)
