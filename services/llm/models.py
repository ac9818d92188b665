"""Database models of the llm service (Postgres schema ``llm``).

Prompt store: a prompt has immutable, numbered versions and named labels that point at one
version or at several with weights (A/B); every version creation and label move is kept in
``prompt_events``. Conversations hold an owner's messages in order; ``prompt_uses`` records
which prompt version served which chat request.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.orm import TYPE_ANNOTATION_MAP, IdMixin, TimestampMixin, service_metadata
from libs.usage_table import UsageOutboxTable


class Base(DeclarativeBase):
    metadata = service_metadata("llm")
    type_annotation_map = TYPE_ANNOTATION_MAP


class CreatedAtMixin:
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


# ---------------------------------------------------------------------------- prompt store


class Prompt(IdMixin, TimestampMixin, Base):
    """A named prompt of one organization; its content lives in versions."""

    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    org_id: Mapped[uuid.UUID] = mapped_column(index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_by_user: Mapped[uuid.UUID | None] = mapped_column(default=None)
    created_by_key: Mapped[uuid.UUID | None] = mapped_column(default=None)


class PromptVersion(IdMixin, CreatedAtMixin, Base):
    """One immutable version: message templates, model alias, parameters, variables schema.

    The database refuses UPDATE on this table (trigger in migration llm_0001)."""

    __tablename__ = "prompt_versions"
    __table_args__ = (UniqueConstraint("prompt_id", "number"),)

    prompt_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("prompts.id", ondelete="CASCADE"), index=True
    )
    org_id: Mapped[uuid.UUID] = mapped_column()
    number: Mapped[int] = mapped_column(Integer)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    variables: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    commit_message: Mapped[str] = mapped_column(Text, default="")
    created_by_user: Mapped[uuid.UUID | None] = mapped_column(default=None)
    created_by_key: Mapped[uuid.UUID | None] = mapped_column(default=None)


class PromptLabel(IdMixin, TimestampMixin, Base):
    """A movable name (``production``, ``staging``, ...) pointing at weighted versions.

    ``targets`` is ``[{"version_id": str, "number": int, "weight": int}, ...]``; versions
    are immutable and only deleted with their prompt, so the ids stay valid."""

    __tablename__ = "prompt_labels"
    __table_args__ = (UniqueConstraint("prompt_id", "name"),)

    prompt_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("prompts.id", ondelete="CASCADE"), index=True
    )
    org_id: Mapped[uuid.UUID] = mapped_column()
    name: Mapped[str] = mapped_column(String(64))
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)


class PromptEvent(IdMixin, CreatedAtMixin, Base):
    """History: who created a prompt or version, who moved or deleted a label, and when."""

    __tablename__ = "prompt_events"
    __table_args__ = (Index("ix_llm_prompt_events_prompt_seq", "prompt_id", "seq"),)

    prompt_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    # total order of events (several happen in one transaction, at one created_at)
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    org_id: Mapped[uuid.UUID] = mapped_column()
    action: Mapped[str] = mapped_column(String(32))
    label: Mapped[str | None] = mapped_column(String(64), default=None)
    version_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    before: Mapped[Any] = mapped_column(JSONB, nullable=True, default=None)
    after: Mapped[Any] = mapped_column(JSONB, nullable=True, default=None)
    actor_user: Mapped[uuid.UUID | None] = mapped_column(default=None)
    actor_key: Mapped[uuid.UUID | None] = mapped_column(default=None)


class PromptUse(IdMixin, CreatedAtMixin, Base):
    """Which prompt version served which chat request (written when the reply is complete)."""

    __tablename__ = "prompt_uses"
    __table_args__ = (Index("ix_llm_prompt_uses_version_created", "version_id", "created_at"),)

    org_id: Mapped[uuid.UUID] = mapped_column(index=True)
    prompt_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("prompt_versions.id", ondelete="CASCADE")
    )
    label: Mapped[str | None] = mapped_column(String(64), default=None)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    key_id: Mapped[uuid.UUID | None] = mapped_column(default=None)


# ---------------------------------------------------------------------------- conversations


class Conversation(IdMixin, TimestampMixin, Base):
    """A thread owned by a user of an organization, or by an API key that has no user."""

    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_llm_conversations_org_user", "org_id", "user_id", "created_at"),
        Index("ix_llm_conversations_org_key", "org_id", "key_id", "created_at"),
    )

    org_id: Mapped[uuid.UUID] = mapped_column()
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    key_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    title: Mapped[str] = mapped_column(String(500), default="")
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    message_count: Mapped[int] = mapped_column(Integer, default=0)


class ConversationMessage(IdMixin, CreatedAtMixin, Base):
    """One message in OpenAI's shape (``data``), numbered in order within its conversation."""

    __tablename__ = "conversation_messages"
    __table_args__ = (UniqueConstraint("conversation_id", "seq"),)

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    org_id: Mapped[uuid.UUID] = mapped_column()
    seq: Mapped[int] = mapped_column(BigInteger)
    role: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    prompt_version_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)


# ---------------------------------------------------------------------------- usage outbox


class UsageOutboxRow(UsageOutboxTable, Base):
    """A usage event Redis could not take (an outage), kept until it is queued to billing
    (written and replayed by :class:`libs.usage.UsageOutbox`; see :mod:`libs.usage_table`)."""


# ---------------------------------------------------------------------------- stored responses


# the ids of a stored response's input items and output items, as one JSON array
RESPONSE_ITEM_IDS = (
    "(jsonb_path_query_array(input_items, '$[*].\"id\"'::jsonpath) || "
    'jsonb_path_query_array(response, \'$."output"[*]."id"\'::jsonpath))'
)


class StoredResponse(Base):
    """A ``/v1/responses`` answer kept for ``GET``/``DELETE`` and ``previous_response_id``.

    ``response`` is the response object as answered; ``input_items`` this turn's input in the
    Responses item shape (``GET .../input_items``); ``history`` the whole conversation as chat
    messages up to and including this turn's output (without ``instructions``, which are not
    inherited), so a later turn that names this one prepends it with one row read. Rows past
    ``expires_at`` are invisible and purged by the llm worker (:mod:`services.llm.tasks`).
    """

    __tablename__ = "responses"
    __table_args__ = (
        Index("ix_llm_responses_expires_at", "expires_at"),
        Index("ix_llm_responses_org_created", "org_id", "created_at"),
        # item_reference inputs: the ids of a row's input and output items (migration llm_0004)
        Index("ix_llm_responses_item_ids", text(RESPONSE_ITEM_IDS), postgresql_using="gin"),
    )

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column()
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    key_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    model: Mapped[str] = mapped_column(String(200))
    previous_response_id: Mapped[str | None] = mapped_column(String(80), default=None)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    input_items: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
