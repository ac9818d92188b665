"""Database models of the jobs service (Postgres schema ``jobs``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
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
        # the reconciler's scan: jobs not finished
        Index(
            "ix_jobs_jobs_active_last_event_at",
            "last_event_at",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # retention: finished jobs by age
        Index(
            "ix_jobs_jobs_finished_at",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
        ),
        Index(
            "ix_jobs_jobs_parent_id", "parent_id", postgresql_where=text("parent_id IS NOT NULL")
        ),
        Index(
            "ix_jobs_jobs_schedule_id_created_at",
            "schedule_id",
            "created_at",
            postgresql_where=text("schedule_id IS NOT NULL"),
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
    # a failure's traceback summary (failed, dead, or a retry waiting)
    traceback: Mapped[str | None] = mapped_column(Text, default=None)
    # the worker that runs (or last ran) it
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    parent_id: Mapped[str | None] = mapped_column(String(255), default=None)
    priority: Mapped[str | None] = mapped_column(String(8), default=None)
    # a queued attempt that waits until then (a retry's backoff, a deferred job)
    run_at: Mapped[datetime | None] = mapped_column(default=None)
    max_tries: Mapped[int | None] = mapped_column(Integer, default=None)
    # the W3C trace context it was enqueued in (enqueued again, it keeps its trace)
    traceparent: Mapped[str | None] = mapped_column(String(64), default=None)
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    # a dead or failed job run again: the new job's id
    retried_as: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    last_event_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class JobType(Base):
    """A job type some worker declared (libs.queue.types), as it last published it."""

    __tablename__ = "job_types"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queue: Mapped[str] = mapped_column(String(255))
    # the whole declaration as published (description, args_schema, retry, ...)
    spec: Mapped[Any] = mapped_column(JSONB)
    user_startable: Mapped[bool] = mapped_column(Boolean, default=False)
    schedulable: Mapped[bool] = mapped_column(Boolean, default=False)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Schedule(Base):
    """A periodic job: an organization's (through the API) or the platform's (declared in code,
    ``key`` = ``<service>:<name>``, no organization)."""

    __tablename__ = "schedules"
    __table_args__ = (
        UniqueConstraint("key", name="uq_schedules_key"),
        Index("ix_jobs_schedules_org_id_created_at", "org_id", "created_at"),
        Index("ix_jobs_schedules_due", "next_run_at", postgresql_where=text("NOT paused")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    org_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    key: Mapped[str | None] = mapped_column(String(300), default=None)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    service: Mapped[str] = mapped_column(String(64))
    function: Mapped[str] = mapped_column(String(200))
    kwargs: Mapped[Any] = mapped_column(JSONB, default=dict)
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # a tick missed while nothing ran: skip it, or run once for all of them
    missed: Mapped[str] = mapped_column(String(16), default="skip")
    priority: Mapped[str | None] = mapped_column(String(8), default=None)
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    next_run_at: Mapped[datetime | None] = mapped_column(default=None)
    last_run_at: Mapped[datetime | None] = mapped_column(default=None)
    last_job_id: Mapped[str | None] = mapped_column(String(255), default=None)
    runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Batch(Base):
    """One OpenAI Batch API batch (``/v1/batches``): its input file (in rag), status flow,
    timestamps and counts. ``principal`` is the owner's, signed again for every request the
    batch sends (rag's files, the llm's lines); ``job_id`` the ``run_batch`` job running it."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_jobs_batches_org_id_created_at", "org_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    principal: Mapped[dict[str, Any]] = mapped_column(JSONB)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(200))
    completion_window: Mapped[str] = mapped_column(String(16))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB, default=None)
    output_expires_after: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    status: Mapped[str] = mapped_column(String(16))
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB, default=None)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    output_file_id: Mapped[str | None] = mapped_column(String(200), default=None)
    error_file_id: Mapped[str | None] = mapped_column(String(200), default=None)
    job_id: Mapped[str | None] = mapped_column(String(255), default=None)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # every line up to this one (0-based) may have been sent (runner.py: never twice)
    claimed_through: Mapped[int] = mapped_column(Integer, default=-1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class BatchLine(Base):
    """What became of one line of a batch's input file (``line``: its 0-based number): its
    result line, ``ok`` (for the output file) or ``error`` (the error file). A line claimed
    (``Batch.claimed_through``) without one when a run starts was being sent by a worker that
    died: it is reported as interrupted rather than sent again."""

    __tablename__ = "batch_lines"

    batch_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("jobs.batches.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str | None] = mapped_column(Text, default=None)
    state: Mapped[str] = mapped_column(String(8))
    # the line of the output or error file (JSON text, kept as the llm's answer came)
    result: Mapped[str | None] = mapped_column(Text, default=None)


# the notification center's tables, on this Base (imported last: they import it)
from services.jobs.notifications import models as _notification_models  # noqa: E402, F401
