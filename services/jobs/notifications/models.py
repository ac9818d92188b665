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


class WebhookEndpoint(Base):
    """An organization's webhook endpoint: where its events are POSTed, signed (Standard
    Webhooks). ``previous_secret`` stays valid until ``previous_expires_at`` (a rotation)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_jobs_webhook_endpoints_org_id", "org_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    org_id: Mapped[uuid.UUID]
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), default="")
    # the kinds it wants (empty: every kind webhooks may carry)
    kinds: Mapped[Any] = mapped_column(JSONB, default=list)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128), default=None)
    previous_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    failing_since: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookMessage(Base):
    """One event to deliver to one endpoint; ``status``: pending, succeeded, failed (out of
    tries). Its attempts are :class:`WebhookAttempt` rows."""

    __tablename__ = "webhook_messages"
    __table_args__ = (
        UniqueConstraint(
            "endpoint_id", "event_id", name="uq_webhook_messages_endpoint_id_event_id"
        ),
        Index("ix_jobs_webhook_messages_endpoint_id_created_at", "endpoint_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    org_id: Mapped[uuid.UUID]
    endpoint_id: Mapped[uuid.UUID]
    event_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[Any] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookAttempt(Base):
    """One POST of a message: what the endpoint answered (or why nothing was sent)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_jobs_webhook_attempts_message_id", "message_id", "attempt"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    message_id: Mapped[uuid.UUID]
    endpoint_id: Mapped[uuid.UUID]
    attempt: Mapped[int]
    status_code: Mapped[int | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    latency_ms: Mapped[int] = mapped_column(default=0)
    response: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class NotificationPreference(Base):
    """Which channels a kind goes to: a user's choice (``org_id`` None, for every organization)
    or an organization's default for its members (``user_id`` None). ``channels`` empty: none."""

    __tablename__ = "notification_preferences"
    __table_args__ = (
        Index(
            "uq_jobs_notification_preferences_user",
            "user_id",
            "kind",
            unique=True,
            postgresql_where=text("org_id IS NULL"),
        ),
        Index(
            "uq_jobs_notification_preferences_org",
            "org_id",
            "kind",
            unique=True,
            postgresql_where=text("user_id IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    org_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    kind: Mapped[str] = mapped_column(String(64))
    channels: Mapped[Any] = mapped_column(JSONB, default=list)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class NotificationSettings(Base):
    """A user's mail settings: how often digests come, and the language of mails."""

    __tablename__ = "notification_settings"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(8), default="daily")
    language: Mapped[str] = mapped_column(String(8), default="en")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class NotificationMail(Base):
    """A mail owed to a user about an event: alone (``mode`` now) or in their next digest."""

    __tablename__ = "notification_mails"
    __table_args__ = (
        UniqueConstraint("event_id", "user_id", name="uq_notification_mails_event_id_user_id"),
        Index(
            "ix_jobs_notification_mails_pending_digest",
            "user_id",
            postgresql_where=text("status = 'pending' AND mode = 'digest'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID]
    org_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    org_name: Mapped[str] = mapped_column(String(200), default="")
    event_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(64))
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    mode: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(8), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
