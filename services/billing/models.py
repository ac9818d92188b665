"""Database models of the billing service (Postgres schema ``billing``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Boolean, DateTime, Index, Integer, Numeric, String, UniqueConstraint, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.orm import TYPE_ANNOTATION_MAP, IdMixin, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata("billing")
    type_annotation_map = TYPE_ANNOTATION_MAP


class UsageEventRecord(IdMixin, Base):
    """The usage ledger: one row per metered request and kind (see ``libs.usage.UsageEvent``)."""

    __tablename__ = "usage_events"
    __table_args__ = (
        UniqueConstraint("request_id", "kind"),
        Index("ix_billing_usage_events_org_id_created_at", "org_id", "created_at"),
    )

    request_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    org_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    key_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(18, 8), default=Decimal(0))
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # the llm service's stored prompt version that served the request (billing_0002)
    prompt_version_id: Mapped[str | None] = mapped_column(String(64), default=None)
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
