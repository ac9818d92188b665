"""Data access of conversations and their messages.

Every lookup by id also filters by organization and owner, so an id from another tenant or
owner reads exactly like an unknown one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select

from libs.orm import Repository
from services.llm.models import Conversation, ConversationMessage


def owner_filter(
    org_id: uuid.UUID, user_id: uuid.UUID | None, key_id: uuid.UUID | None
) -> ColumnElement[bool]:
    """A user sees their own conversations; an API key without a user sees the key's own."""
    if user_id is not None:
        return and_(Conversation.org_id == org_id, Conversation.user_id == user_id)
    return and_(
        Conversation.org_id == org_id,
        Conversation.user_id.is_(None),
        Conversation.key_id == key_id,
    )


class ConversationRepository(Repository[Conversation]):
    model = Conversation

    async def get_owned(
        self, owner: ColumnElement[bool], conversation_id: uuid.UUID, *, lock: bool = False
    ) -> Conversation | None:
        stmt = select(Conversation).where(owner, Conversation.id == conversation_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def lock(self, conversation_id: uuid.UUID) -> Conversation | None:
        stmt = select(Conversation).where(Conversation.id == conversation_id).with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def page(
        self,
        owner: ColumnElement[bool],
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> list[Conversation]:
        stmt = select(Conversation).where(owner)
        if after is not None:
            at, last_id = after
            stmt = stmt.where(
                or_(
                    Conversation.created_at < at,
                    and_(Conversation.created_at == at, Conversation.id < last_id),
                )
            )
        stmt = stmt.order_by(Conversation.created_at.desc(), Conversation.id.desc()).limit(limit)
        return list((await self.session.scalars(stmt)).all())

    async def messages(self, conversation_id: uuid.UUID) -> list[ConversationMessage]:
        stmt = (
            select(ConversationMessage)
            .where(ConversationMessage.conversation_id == conversation_id)
            .order_by(ConversationMessage.seq)
        )
        return list((await self.session.scalars(stmt)).all())

    async def append(
        self, conversation: Conversation, rows: list[dict[str, Any]]
    ) -> list[ConversationMessage]:
        """Append messages after the last one; the caller holds the conversation's row lock."""
        out = []
        seq = conversation.message_count
        for row in rows:
            seq += 1
            msg = ConversationMessage(
                conversation_id=conversation.id, org_id=conversation.org_id, seq=seq, **row
            )
            self.session.add(msg)
            out.append(msg)
        conversation.message_count = seq
        conversation.updated_at = func.now()
        await self.session.flush()
        return out
