"""Database models of the rag service (Postgres schema ``rag``)."""

from __future__ import annotations

import uuid

from sqlalchemy import String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.orm import TYPE_ANNOTATION_MAP, IdMixin, TimestampMixin, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata("rag")
    type_annotation_map = TYPE_ANNOTATION_MAP


class KnowledgeBase(IdMixin, TimestampMixin, Base):
    """A named collection of documents searched together; owned by one organization."""

    __tablename__ = "knowledge_bases"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    org_id: Mapped[uuid.UUID] = mapped_column(index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    embedding_model: Mapped[str] = mapped_column(String(200), default="embed")
    created_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
