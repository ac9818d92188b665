"""Where feature flags are stored."""

from __future__ import annotations

from sqlalchemy import select

from libs.orm import Repository
from services.auth.models import FeatureFlag


class FlagRepository(Repository[FeatureFlag]):
    model = FeatureFlag

    async def by_key(self, key: str, *, lock: bool = False) -> FeatureFlag | None:
        """The flag; ``lock``: held until the transaction ends (a concurrent DELETE of it waits,
        or has already removed it: None)."""
        stmt = select(FeatureFlag).where(FeatureFlag.key == key)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def everything(self) -> list[FeatureFlag]:
        return await self.list(order_by=(FeatureFlag.key,), limit=10_000)
