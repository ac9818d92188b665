"""Feature flags: stored here, published to Redis for every service's reader (libs.flags)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import after_commit
from libs.errors import NotFound
from libs.flags import (
    FLAGS_VERSION_KEY,
    FlagDefinition,
    definitions_published,
    evaluate_all,
    evaluated_key,
    publish_all,
    publish_flag,
)
from services.auth.core.context import AuthContext
from services.auth.core.feature_service import FeatureService
from services.auth.flags.repository import FlagRepository
from services.auth.flags.schemas import FlagIn
from services.auth.models import FeatureFlag

log = logging.getLogger("aistack.auth")


def flag_definition(flag: FeatureFlag) -> FlagDefinition:
    """A stored flag as every service evaluates it (libs.flags)."""
    return FlagDefinition(
        key=flag.key,
        enabled=flag.enabled,
        rollout_percentage=flag.rollout_percentage,
        org_overrides={str(k): bool(v) for k, v in (flag.org_overrides or {}).items()},
    )


async def publish_flag_definitions(session: AsyncSession, redis: Redis) -> int:
    """Write every flag definition to Redis for the other services (auth's startup)."""

    async def load() -> list[FlagDefinition]:
        return [flag_definition(f) for f in await FlagRepository(session).everything()]

    return await publish_all(redis, load)


class FlagService(FeatureService):
    def __init__(self, ctx: AuthContext) -> None:
        super().__init__(ctx)
        self.flags = FlagRepository(ctx.session)

    @staticmethod
    def flag_out(flag: FeatureFlag) -> dict[str, Any]:
        return {
            "key": flag.key,
            "description": flag.description,
            "enabled": flag.enabled,
            "rollout_percentage": flag.rollout_percentage,
            "org_overrides": dict(flag.org_overrides or {}),
            "updated_at": flag.updated_at,
        }

    def _flag_changed(self, key: str, definition: FlagDefinition | None) -> None:
        """After commit: the new definition reaches Redis and the flags version moves on."""
        redis = self.redis

        async def publish() -> None:
            try:
                await publish_flag(redis, key, definition)
            except Exception:
                log.warning("could not publish the change of flag %s", key, exc_info=True)

        after_commit(self.session, publish)

    async def list_flags(self) -> list[FeatureFlag]:
        await self.require_platform_admin()
        return await self.flags.everything()

    async def get_flag(self, key: str) -> FeatureFlag:
        await self.require_platform_admin()
        flag = await self.flags.by_key(key)
        if flag is None:
            raise NotFound("Flag not found", code="flag_not_found")
        return flag

    async def put_flag(self, key: str, body: FlagIn) -> tuple[FeatureFlag, bool]:
        await self.require_platform_admin()
        # locked: a DELETE of it running at the same time made the UPDATE below match no row
        # (StaleDataError, a 500 the fuzz stage found)
        flag = await self.flags.by_key(key, lock=True)
        created = flag is None
        if flag is None:
            try:
                async with self.session.begin_nested():
                    flag = FeatureFlag(key=key)
                    _apply(flag, body)
                    self.session.add(flag)
                    await self.session.flush()
            except IntegrityError:
                # a concurrent PUT created it first (two admins, a retried request): this one
                # replaces it, as a PUT of an existing flag does, instead of failing with 500
                flag = await self.flags.by_key(key, lock=True)
                if flag is None:
                    raise
                created = False
        _apply(flag, body)
        await self.session.flush()
        await self.session.refresh(flag)
        self._flag_changed(key, flag_definition(flag))
        await self.audit(
            "flag.updated",
            target_type="flag",
            target_id=key,
            details={"enabled": body.enabled, "rollout_percentage": body.rollout_percentage},
        )
        return flag, created

    async def delete_flag(self, key: str) -> None:
        flag = await self.get_flag(key)
        await self.flags.delete(flag)
        self._flag_changed(key, None)
        await self.audit("flag.deleted", target_type="flag", target_id=key)

    async def evaluated_flags(self) -> dict[str, Any]:
        org_id = self.principal.require_org()
        version = int(await self.redis.get(FLAGS_VERSION_KEY) or 0)
        cache_key = evaluated_key(version, org_id)
        cached = await self.redis.get(cache_key)
        if cached is not None:
            return {"org_id": org_id, "flags": orjson.loads(cached)}
        stored = await self.flags.everything()
        if stored and not await definitions_published(self.redis):
            # Redis lost them (flushed, replaced): the other services read them from there
            await publish_flag_definitions(self.session, self.redis)
            version = int(await self.redis.get(FLAGS_VERSION_KEY) or 0)
            cache_key = evaluated_key(version, org_id)
        flags = evaluate_all((flag_definition(f) for f in stored), org_id)
        await self.redis.set(cache_key, orjson.dumps(flags), ex=self.settings.flags_cache_seconds)
        return {"org_id": org_id, "flags": flags}


def _apply(flag: FeatureFlag, body: FlagIn) -> None:
    flag.enabled = body.enabled
    flag.description = body.description
    flag.rollout_percentage = body.rollout_percentage
    flag.org_overrides = {str(k): v for k, v in body.org_overrides.items()}
