"""Where API keys are stored."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from libs.orm import Repository
from services.auth.models import ApiKey


class ApiKeyRepository(Repository[ApiKey]):
    model = ApiKey

    async def get_for_org(self, org_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id)
        return (await self.session.scalars(stmt)).one_or_none()

    async def by_hash(self, key_hash: str) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.key_hash == key_hash)
        return (await self.session.scalars(stmt)).one_or_none()

    async def live_of_member(self, org_id: uuid.UUID, user_id: uuid.UUID) -> list[ApiKey]:
        """Keys a member created in an organization and that are not revoked (locked)."""
        stmt = (
            select(ApiKey)
            .where(ApiKey.org_id == org_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at, ApiKey.id)
            .with_for_update()
        )
        return list((await self.session.scalars(stmt)).all())

    async def page(
        self, org_id: uuid.UUID, limit: int, offset: int, include_revoked: bool
    ) -> list[ApiKey]:
        where: list[Any] = [ApiKey.org_id == org_id]
        if not include_revoked:
            where.append(ApiKey.revoked_at.is_(None))
        return await self.list(
            *where, order_by=(ApiKey.created_at.desc(), ApiKey.id), limit=limit, offset=offset
        )
