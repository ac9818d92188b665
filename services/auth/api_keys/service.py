"""API keys: created within the caller's role, revoked at once everywhere, introspected by the
gateway (which caches the answer in Redis for a few seconds)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import update

from libs.db import after_commit
from libs.errors import Conflict, Forbidden, NotFound, ValidationFailed
from libs.permissions import ROLE_RANK, ROLE_SCOPES, Role, Scope
from libs.redis import RedisUnavailable, guard_for
from services.auth.api_keys.repository import ApiKeyRepository
from services.auth.api_keys.schemas import ApiKeyCreate, ApiKeyUpdate
from services.auth.core.context import AuthContext, utcnow
from services.auth.core.feature_service import FeatureService
from services.auth.core.security import (
    API_KEY_SHOWN_PREFIX_LEN,
    looks_like_api_key,
    new_api_key,
    sha256_hex,
)
from services.auth.models import ApiKey, Membership, User

log = logging.getLogger("aistack.auth")

# Redis contracts shared with the gateway
APIKEY_CACHE_PREFIX = "aistack:apikey:"
APIKEY_REVOKED_CHANNEL = "aistack:apikey:revoked"
_APIKEY_USED = "aistack:auth:apikey-used:"


class ApiKeyService(FeatureService):
    def __init__(self, ctx: AuthContext) -> None:
        super().__init__(ctx)
        self.api_keys = ApiKeyRepository(ctx.session)

    async def _key_manager(self) -> tuple[User, Membership]:
        user, _ = await self.current_user()
        org_id = self.principal.require_org()
        return user, await self._membership(org_id, user.id)

    async def create_api_key(self, body: ApiKeyCreate) -> tuple[ApiKey, str]:
        user, m = await self._key_manager()
        allowed = ROLE_SCOPES[Role(m.role)]
        if m.role == Role.VIEWER.value:
            raise Forbidden("Viewers cannot create API keys", code="role_too_low")
        beyond = sorted({Scope(s) for s in body.scopes} - allowed)
        if beyond:
            raise Forbidden(
                f"Your role cannot grant: {', '.join(beyond)}",
                code="scope_not_allowed",
                details={"scopes": [s.value for s in beyond]},
            )
        if body.expires_at is not None and body.expires_at <= utcnow():
            raise ValidationFailed(
                "expires_at must be in the future",
                details=[
                    {
                        "field": "body.expires_at",
                        "message": "must be in the future",
                        "type": "value_error",
                    }
                ],
            )
        raw = new_api_key()
        key = ApiKey(
            org_id=m.org_id,
            user_id=user.id,
            name=body.name,
            prefix=raw[:API_KEY_SHOWN_PREFIX_LEN],
            key_hash=sha256_hex(raw),
            scopes=body.scopes,
            expires_at=body.expires_at,
            rpm_limit=body.rpm_limit,
            tpm_limit=body.tpm_limit,
            monthly_budget_usd=body.monthly_budget_usd,
        )
        await self.api_keys.add(key)
        await self.session.refresh(key)
        await self.audit(
            "api_key.created",
            org_id=m.org_id,
            target_type="api_key",
            target_id=key.id,
            details={"name": key.name, "scopes": key.scopes, "prefix": key.prefix},
        )
        return key, raw

    async def list_api_keys(
        self, limit: int, offset: int, include_revoked: bool
    ) -> tuple[list[ApiKey], bool]:
        _, m = await self._key_manager()
        rows = await self.api_keys.page(m.org_id, limit + 1, offset, include_revoked)
        return rows[:limit], len(rows) > limit

    async def get_api_key(self, key_id: uuid.UUID) -> ApiKey:
        _, m = await self._key_manager()
        key = await self.api_keys.get_for_org(m.org_id, key_id)
        if key is None:
            raise NotFound("API key not found", code="api_key_not_found")
        return key

    async def update_api_key(self, key_id: uuid.UUID, body: ApiKeyUpdate) -> ApiKey:
        """Change a key's name or limits (its creator or an admin); gateways see the change
        within a second (their cached introspection is dropped after commit)."""
        m, key = await self._managed_key(key_id, "change")
        if key.revoked_at is not None:
            raise Conflict("This API key is revoked", code="api_key_revoked")
        changes = body.model_dump(include=body.model_fields_set)
        if "name" in changes and changes["name"] is None:
            raise ValidationFailed(
                "name cannot be null",
                details=[
                    {"field": "body.name", "message": "cannot be null", "type": "value_error"}
                ],
            )
        for name, value in changes.items():
            setattr(key, name, value)
        await self.session.flush()
        await self.session.refresh(key)
        redis, key_hash = self.redis, key.key_hash

        async def drop_cache() -> None:
            try:
                await redis.delete(APIKEY_CACHE_PREFIX + key_hash)
            except Exception:
                log.warning("could not drop the cached introspection of key %s", key.id)

        after_commit(self.session, drop_cache)
        await self.audit(
            "api_key.updated",
            org_id=m.org_id,
            target_type="api_key",
            target_id=key.id,
            details={k: (str(v) if v is not None else None) for k, v in changes.items()},
        )
        return key

    async def _managed_key(self, key_id: uuid.UUID, verb: str) -> tuple[Membership, ApiKey]:
        """The caller's membership and the organization's key ``key_id``, which only its
        creator or an admin may ``verb``."""
        user, m = await self._key_manager()
        key = await self.api_keys.get_for_org(m.org_id, key_id)
        if key is None:
            raise NotFound("API key not found", code="api_key_not_found")
        if key.user_id != user.id and ROLE_RANK[Role(m.role)] < ROLE_RANK[Role.ADMIN]:
            raise Forbidden(
                f"Only its creator or an admin can {verb} a key", code="org_admin_required"
            )
        return m, key

    async def revoke_api_key(self, key_id: uuid.UUID) -> None:
        _, key = await self._managed_key(key_id, "revoke")
        await self._revoke_keys([key], key.org_id, reason=None)

    async def revoke_member_keys(self, org_id: uuid.UUID, user_id: uuid.UUID, reason: str) -> None:
        """What a member created in an organization stops working with their membership."""
        keys = await self.api_keys.live_of_member(org_id, user_id)
        await self._revoke_keys(keys, org_id, reason=reason)

    async def _revoke_keys(self, keys: list[ApiKey], org_id: uuid.UUID, reason: str | None) -> None:
        """Revoke now; after commit, gateways drop their cached introspection at once."""
        live = [k for k in keys if k.revoked_at is None]
        if not live:
            return
        now = utcnow()
        for key in live:
            key.revoked_at = now
        await self.session.flush()
        revoked = [(k.id, k.key_hash) for k in live]
        redis = self.redis

        async def drop_caches() -> None:
            # the gateway caches introspection for a few seconds: drop it everywhere at once
            try:
                pipe = redis.pipeline(transaction=False)
                for _, key_hash in revoked:
                    pipe.delete(APIKEY_CACHE_PREFIX + key_hash)
                    pipe.publish(APIKEY_REVOKED_CHANNEL, key_hash)
                await pipe.execute()
            except Exception:
                log.warning(
                    "could not announce the revocation of keys %s",
                    [str(key_id) for key_id, _ in revoked],
                    exc_info=True,
                )

        after_commit(self.session, drop_caches)
        for key in live:
            details: dict[str, Any] = {"name": key.name, "prefix": key.prefix}
            if reason is not None:
                details["reason"] = reason
            await self.audit(
                "api_key.revoked",
                org_id=org_id,
                target_type="api_key",
                target_id=key.id,
                details=details,
            )

    async def introspect(self, raw: str) -> dict[str, Any]:
        p = self.principal
        if p.kind != "service":
            raise Forbidden("Internal route", code="service_principal_required")
        inactive = {"active": False}
        if not looks_like_api_key(raw):
            return inactive
        key = await self.api_keys.by_hash(sha256_hex(raw))
        now = utcnow()
        if key is None or key.revoked_at is not None:
            return inactive
        if key.expires_at is not None and key.expires_at <= now:
            return inactive
        # last-used is informative: write it at most once a minute per key. Without Redis
        # (refused, or hung past a short wait) it is skipped, not an error: the gateway asks
        # here precisely when its own Redis cache is down, within its own short timeout, and
        # every API call would fail with it.
        # The guard (libs.redis) skips Redis at once while it is known to be down, so a hung
        # Redis costs one short wait per outage here, not one per introspection.
        try:
            first_this_minute = await guard_for(self.redis).run(
                "auth_api_key_last_used",
                self.redis.set(f"{_APIKEY_USED}{key.id}", b"1", ex=60, nx=True),
            )
        except RedisUnavailable as exc:
            log.debug("api key %s: last-used not recorded (%s)", key.id, exc)
            first_this_minute = False
        if first_this_minute:
            await self.session.execute(
                update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now)
            )
        return {
            "active": True,
            "key_id": key.id,
            "org_id": key.org_id,
            "user_id": key.user_id,
            "scopes": list(key.scopes),
            "expires_at": key.expires_at,
            "rpm_limit": key.rpm_limit,
            "tpm_limit": key.tpm_limit,
            "monthly_budget_usd": key.monthly_budget_usd,
            "plan": None,
        }
