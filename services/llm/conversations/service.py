"""Conversations: threads of chat messages per organization and owner.

The owner is the calling user; an API key that acts for no user owns its own conversations.
Nobody else sees them, not even other users of the same organization: an id that is not
yours reads exactly like an unknown one (404).

For the chat path: :func:`load_history` returns the stored messages that fit the model's
context window (oldest turns dropped first, system messages kept; counted by
:mod:`services.llm.tokens.tokenizer`) and :func:`store_exchange` appends the request's new messages
and the reply once the reply is complete.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession

from libs import tokens
from libs.errors import Forbidden, NotFound, ValidationFailed
from libs.identity import Principal
from services.llm.chat.schemas import ChatMessage
from services.llm.conversations.repository import ConversationRepository, owner_filter
from services.llm.conversations.schemas import (
    ConversationCreate,
    ConversationUpdate,
    MessageOut,
)
from services.llm.models import Conversation, ConversationMessage
from services.llm.tokens import tokenizer
from services.llm.tokens.tokenizer import TokenPlan

log = logging.getLogger("aistack.llm")

MessageCost = Callable[[dict[str, Any]], int]
KEEP_ROLES = frozenset({"system", "developer"})


def _not_found() -> NotFound:
    return NotFound("Conversation not found", code="conversation_not_found")


def owner_of(principal: Principal) -> ColumnElement[bool]:
    """The SQL condition selecting ``principal``'s own conversations."""
    org_id = principal.require_org()
    if principal.user_id is None and principal.key_id is None:
        raise Forbidden(
            "Conversations belong to a user or an API key", code="no_conversation_owner"
        )
    return owner_filter(org_id, principal.user_id, principal.key_id)


def message_row(message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"role": str(message.get("role") or ""), "data": message, **extra}


_OUR_FIELDS = frozenset({"id", "seq", "created_at", "request_id", "prompt_version_id", "usage"})


def message_out(row: ConversationMessage) -> MessageOut:
    data = {k: v for k, v in row.data.items() if k not in _OUR_FIELDS}
    return MessageOut(
        id=row.id,
        seq=row.seq,
        created_at=row.created_at,
        request_id=row.request_id,
        prompt_version_id=row.prompt_version_id,
        usage=row.usage,
        **data,
    )


def encode_cursor(row: Conversation) -> str:
    raw = orjson.dumps([row.created_at.isoformat(), str(row.id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, last = orjson.loads(raw)
        return datetime.fromisoformat(at), uuid.UUID(last)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise ValidationFailed(
            "The cursor is not one this API returned",
            code="invalid_cursor",
            details=[{"field": "query.cursor", "message": "invalid cursor"}],
        ) from exc


class ConversationService:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.session = session
        self.repo = ConversationRepository(session)
        self.principal = principal
        self.org_id = principal.require_org()
        self.owner = owner_of(principal)

    async def get(self, conversation_id: uuid.UUID, *, lock: bool = False) -> Conversation:
        found = await self.repo.get_owned(self.owner, conversation_id, lock=lock)
        if found is None:
            raise _not_found()
        return found

    async def create(self, data: ConversationCreate) -> Conversation:
        conversation = Conversation(
            org_id=self.org_id,
            user_id=self.principal.user_id,
            key_id=None if self.principal.user_id else self.principal.key_id,
            title=data.title,
            model=data.model,
            meta=data.metadata,
            message_count=0,
        )
        await self.repo.add(conversation)
        if data.messages:
            await self.repo.append(conversation, [_row(m) for m in data.messages])
        await self.session.refresh(conversation)
        return conversation

    async def list_page(
        self, limit: int, cursor: str | None
    ) -> tuple[list[Conversation], bool, str | None]:
        after = decode_cursor(cursor) if cursor else None
        rows = await self.repo.page(self.owner, limit + 1, after)
        page, has_more = rows[:limit], len(rows) > limit
        return page, has_more, encode_cursor(page[-1]) if has_more and page else None

    async def update(self, conversation_id: uuid.UUID, data: ConversationUpdate) -> Conversation:
        conversation = await self.get(conversation_id, lock=True)
        if data.title is not None:
            conversation.title = data.title
        if data.metadata is not None:
            conversation.meta = data.metadata
        await self.session.flush()
        await self.session.refresh(conversation)
        return conversation

    async def delete(self, conversation_id: uuid.UUID) -> None:
        await self.repo.delete(await self.get(conversation_id, lock=True))

    async def messages(
        self, conversation_id: uuid.UUID
    ) -> tuple[Conversation, list[ConversationMessage]]:
        conversation = await self.get(conversation_id)
        return conversation, await self.repo.messages(conversation.id)

    async def append(
        self, conversation_id: uuid.UUID, messages: list[ChatMessage]
    ) -> list[ConversationMessage]:
        conversation = await self.get(conversation_id, lock=True)
        rows = await self.repo.append(conversation, [_row(m) for m in messages])
        for row in rows:
            await self.session.refresh(row)
        return rows

    async def export(self, conversation_id: uuid.UUID) -> dict[str, Any]:
        conversation, rows = await self.messages(conversation_id)
        return {
            "object": "conversation.export",
            "format_version": 1,
            "exported_at": datetime.now(UTC).isoformat(),
            "conversation": {
                "id": str(conversation.id),
                "title": conversation.title,
                "model": conversation.model,
                "metadata": conversation.meta,
                "created_at": conversation.created_at.isoformat(),
                "updated_at": conversation.updated_at.isoformat(),
            },
            "messages": [message_out(r).model_dump(mode="json") for r in rows],
        }


def _row(message: ChatMessage) -> dict[str, Any]:
    return message_row(message.model_dump(exclude_none=True))


# ---------------------------------------------------------------------------- chat path


def trim_to_budget(
    messages: list[dict[str, Any]], budget: int, cost: MessageCost
) -> list[dict[str, Any]]:
    """Keep system/developer messages and the newest whole turns whose ``cost`` (tokens of
    one message, framing included) adds up to at most ``budget`` tokens.

    A turn starts at a user message and carries the replies and tool results that follow it,
    so a tool result never loses the assistant message that asked for it. Turns older than
    the first one that does not fit are never counted."""
    kept_system = [m for m in messages if m.get("role") in KEEP_ROLES]
    budget -= sum(cost(m) for m in kept_system)
    turns: list[list[dict[str, Any]]] = []
    for message in messages:
        if message.get("role") in KEEP_ROLES:
            continue
        if message.get("role") == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    kept: list[list[dict[str, Any]]] = []
    for turn in reversed(turns):
        turn_cost = sum(cost(m) for m in turn)
        if turn_cost > budget:
            break
        budget -= turn_cost
        kept.append(turn)
    out = list(kept_system)
    for turn in reversed(kept):
        out.extend(turn)
    return out


def fit_history(
    stored: list[dict[str, Any]],
    new_messages: list[dict[str, Any]],
    budget: int,
    plan: TokenPlan,
    encoding: tokenizer.Encoding,
    keys: Sequence[Hashable] | None = None,
) -> list[dict[str, Any]]:
    """The stored messages that fit in ``budget`` prompt tokens together with
    ``new_messages``, counted by ``plan`` in ``encoding`` (blocking: CPU-bound). ``keys``
    (one per stored message, e.g. its row id) let counts be reused across requests."""
    key_of = {id(m): k for m, k in zip(stored, keys, strict=True)} if keys is not None else {}

    def cost(message: dict[str, Any]) -> int:
        return tokenizer.message_cost(plan, encoding, message, key_of.get(id(message)))

    room = budget - tokenizer.REPLY_PRIMING - sum(cost(m) for m in new_messages)
    return trim_to_budget(stored, room, cost)


async def load_history(
    session: AsyncSession,
    principal: Principal,
    conversation_id: uuid.UUID,
    context_window: int,
    plan: TokenPlan,
    *,
    reserve: int = 0,
    new_messages: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The conversation's messages that fit in ``context_window`` minus ``reserve`` (tokens for
    the reply) together with the request's ``new_messages``; oldest turns go first, system
    messages stay. NotFound unless ``principal`` owns the conversation.

    When the UTF-8 size of everything fits (an upper bound of its tokens), nothing is
    tokenized; otherwise the messages are counted by ``plan`` (its encoding is loaded on first
    use) in a worker thread."""
    repo = ConversationRepository(session)
    conversation = await repo.get_owned(owner_of(principal), conversation_id)
    if conversation is None:
        raise _not_found()
    rows = await repo.messages(conversation.id)
    stored = [row.data for row in rows]
    new = list(new_messages)
    budget = context_window - reserve
    if tokenizer.bound_messages([*stored, *new]) <= budget:
        return stored
    encoding = await tokens.load_encoding(plan.encoding)
    keys = [row.id for row in rows]
    return await asyncio.to_thread(fit_history, stored, new, budget, plan, encoding, keys)


async def store_exchange(
    session: AsyncSession,
    conversation_id: uuid.UUID,
    request_messages_new: Sequence[dict[str, Any]],
    reply_message: dict[str, Any],
    usage: dict[str, Any] | None,
    prompt_version_id: uuid.UUID | None,
    *,
    request_id: str | None = None,
    model: str | None = None,
) -> list[ConversationMessage]:
    """Append the request's new messages and the reply (one transaction, the caller's).

    Ownership was checked when the history was loaded; a conversation deleted since then
    stores nothing (returns [])."""
    repo = ConversationRepository(session)
    conversation = await repo.lock(conversation_id)
    if conversation is None:
        log.info("conversation %s deleted during a request; reply not stored", conversation_id)
        return []
    common = {"request_id": request_id, "prompt_version_id": prompt_version_id}
    rows = [message_row(dict(m), **common) for m in request_messages_new]
    reply = {k: v for k, v in reply_message.items() if v is not None}
    reply.setdefault("role", "assistant")
    rows.append(message_row(reply, usage=usage, **common))
    if conversation.model is None and model:
        conversation.model = model
    return await repo.append(conversation, rows)
