"""Where feature flags are stored."""

from __future__ import annotations

from sqlalchemy import select

from libs.orm import Repository
from services.auth.models import FeatureFlag


class FlagRepository(Repository[FeatureFlag]):
    model = FeatureFlag

    async def by_key(self, key: str) -> FeatureFlag | None:
        stmt = select(FeatureFlag).where(FeatureFlag.key == key)
        return (await self.session.scalars(stmt)).one_or_none()

    async def everything(self) -> list[FeatureFlag]:
        return await self.list(order_by=(FeatureFlag.key,), limit=10_000)
