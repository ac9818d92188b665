"""Data access of the rag service."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from libs.orm import Repository
from services.rag.models import KnowledgeBase


class KnowledgeBaseRepository(Repository[KnowledgeBase]):
    model = KnowledgeBase

    async def get_for_org(self, org_id: uuid.UUID, kb_id: uuid.UUID) -> KnowledgeBase | None:
        stmt = select(KnowledgeBase).where(
            KnowledgeBase.id == kb_id, KnowledgeBase.org_id == org_id
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def get_by_name(self, org_id: uuid.UUID, name: str) -> KnowledgeBase | None:
        stmt = select(KnowledgeBase).where(
            KnowledgeBase.org_id == org_id, KnowledgeBase.name == name
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def page(self, org_id: uuid.UUID, limit: int, offset: int) -> list[KnowledgeBase]:
        return await self.list(
            KnowledgeBase.org_id == org_id,
            order_by=(KnowledgeBase.created_at.desc(), KnowledgeBase.id),
            limit=limit,
            offset=offset,
        )
