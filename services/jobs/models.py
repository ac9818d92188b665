"""Database models of the jobs service (Postgres schema ``jobs``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Index, Integer, String, Text, false, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.orm import TYPE_ANNOTATION_MAP, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata("jobs")
    type_annotation_map = TYPE_ANNOTATION_MAP


class Job(Base):
    """One background job of any service, as reported on the ``aistack:job-events`` stream.

    The id is the arq job id (text). ``attempts`` is the attempt the current status belongs
    to; ``last_event_at`` orders progress updates that arrive out of order. ``internal`` jobs
    (platform bookkeeping, e.g. billing's usage records: one per chat) are not listed to users.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_jobs_org_id_created_at", "org_id", "created_at"),
        Index("ix_jobs_jobs_org_id_status", "org_id", "status"),
        Index(
            "ix_jobs_jobs_visible_org_id_created_at",
            "org_id",
            "created_at",
            postgresql_where=text("NOT internal"),
        ),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    service: Mapped[str] = mapped_column(String(64))
    function: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(255))
    org_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    args: Mapped[Any | None] = mapped_column(JSONB(none_as_null=True), default=None)
    kwargs: Mapped[Any | None] = mapped_column(JSONB(none_as_null=True), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    trace_id: Mapped[str | None] = mapped_column(String(32), default=None)
    retry_of: Mapped[str | None] = mapped_column(String(255), default=None)
    internal: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    last_event_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
