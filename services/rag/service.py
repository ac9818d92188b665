"""Domain logic of the rag service."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from libs.errors import Conflict, NotFound
from libs.identity import Principal
from services.rag.models import KnowledgeBase
from services.rag.repository import KnowledgeBaseRepository
from services.rag.schemas import KnowledgeBaseCreate, KnowledgeBaseUpdate


class KnowledgeBaseService:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.repo = KnowledgeBaseRepository(session)
        self.principal = principal
        self.org_id = principal.require_org()

    async def create(self, data: KnowledgeBaseCreate) -> KnowledgeBase:
        if await self.repo.get_by_name(self.org_id, data.name):
            raise Conflict(
                f"A knowledge base named '{data.name}' already exists", code="name_taken"
            )
        kb = KnowledgeBase(
            org_id=self.org_id,
            name=data.name,
            description=data.description,
            embedding_model=data.embedding_model,
            created_by=self.principal.user_id,
        )
        return await self.repo.add(kb)

    async def get(self, kb_id: uuid.UUID) -> KnowledgeBase:
        kb = await self.repo.get_for_org(self.org_id, kb_id)
        if kb is None:
            # another organization's id looks exactly like an unknown one
            raise NotFound("Knowledge base not found", code="knowledge_base_not_found")
        return kb

    async def list(self, limit: int, offset: int) -> tuple[list[KnowledgeBase], bool]:
        rows = await self.repo.page(self.org_id, limit + 1, offset)
        return rows[:limit], len(rows) > limit

    async def update(self, kb_id: uuid.UUID, data: KnowledgeBaseUpdate) -> KnowledgeBase:
        kb = await self.get(kb_id)
        if data.name is not None and data.name != kb.name:
            if await self.repo.get_by_name(self.org_id, data.name):
                raise Conflict(
                    f"A knowledge base named '{data.name}' already exists", code="name_taken"
                )
            kb.name = data.name
        if data.description is not None:
            kb.description = data.description
        await self.repo.session.flush()
        await self.repo.session.refresh(kb)
        return kb

    async def delete(self, kb_id: uuid.UUID) -> None:
        await self.repo.delete(await self.get(kb_id))
