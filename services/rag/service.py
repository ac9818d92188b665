"""Domain logic of the rag service."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from libs.errors import Conflict, NotFound
from libs.identity import Principal
from services.rag.models import KnowledgeBase
from services.rag.repository import KnowledgeBaseRepository
from services.rag.schemas import KnowledgeBaseCreate, KnowledgeBaseUpdate


def _name_taken(name: str) -> Conflict:
    return Conflict(f"A knowledge base named '{name}' already exists", code="name_taken")


class KnowledgeBaseService:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.repo = KnowledgeBaseRepository(session)
        self.principal = principal
        self.org_id = principal.require_org()

    async def create(self, data: KnowledgeBaseCreate) -> KnowledgeBase:
        if await self.repo.get_by_name(self.org_id, data.name):
            raise _name_taken(data.name)
        kb = KnowledgeBase(
            org_id=self.org_id,
            name=data.name,
            description=data.description,
            embedding_model=data.embedding_model,
            created_by=self.principal.user_id,
        )
        # the check above cannot see a concurrent request's uncommitted row: the unique
        # constraint decides, and the loser gets the same 409 (was a 500)
        try:
            async with self.repo.session.begin_nested():
                return await self.repo.add(kb)
        except IntegrityError:
            raise _name_taken(data.name) from None

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
                raise _name_taken(data.name)
            kb.name = data.name
        if data.description is not None:
            kb.description = data.description
        try:
            async with self.repo.session.begin_nested():
                await self.repo.session.flush()
        except IntegrityError:
            raise _name_taken(str(data.name)) from None
        await self.repo.session.refresh(kb)
        return kb

    async def delete(self, kb_id: uuid.UUID) -> None:
        await self.repo.delete(await self.get(kb_id))
