"""Tables of the notification center (schema ``jobs``): events received, users' notifications."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, Index, String, UniqueConstraint, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from services.jobs.models import Base


class NotificationEvent(Base):
    """One event any service emitted (libs/notify), kept once per id: a duplicate delivery of
    the same event finds it and does nothing."""

    __tablename__ = "notification_events"
    __table_args__ = (
        Index("ix_jobs_notification_events_org_id_received_at", "org_id", "received_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    org_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    subject: Mapped[Any] = mapped_column(JSONB, default=dict)
    data: Mapped[Any] = mapped_column(JSONB, default=dict)
    source: Mapped[str] = mapped_column(String(64), default="")
    # how many users it reached in-app
    recipients: Mapped[int] = mapped_column(default=0, server_default="0")
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Notification(Base):
    """One user's in-app notification. ``seq`` orders a user's notifications (cursor pages);
    ``org_id`` None: about the user's account, shown whatever organization they act in."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("event_id", "user_id", name="uq_notifications_event_id_user_id"),
        Index("ix_jobs_notifications_user_id_seq", "user_id", "seq"),
        Index(
            "ix_jobs_notifications_unread",
            "user_id",
            "org_id",
            postgresql_where=text("read_at IS NULL AND archived_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    user_id: Mapped[uuid.UUID]
    org_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    event_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[Any] = mapped_column(JSONB, default=dict)
    data: Mapped[Any] = mapped_column(JSONB, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    read_at: Mapped[datetime | None] = mapped_column(default=None)
    archived_at: Mapped[datetime | None] = mapped_column(default=None)
