"""Request and response schemas of the jobs service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled", "dead"]
PriorityName = Literal["high", "normal", "low"]


class ChildrenOut(BaseModel):
    total: int
    by_status: dict[str, int]
    progress: float = Field(description="Mean progress of the children, 0-100")


# the pydantic mypy plugin's synthesized __init__(**kwargs) clashes with the `kwargs` field
class JobOut(BaseModel):  # type: ignore[no-redef]
    model_config = ConfigDict(from_attributes=True)

    id: str
    service: str
    function: str
    queue: str
    status: JobStatusName
    progress: int = Field(description="0-100")
    message: str | None
    error: str | None
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    attempts: int
    request_id: str | None
    trace_id: str | None
    retry_of: str | None
    internal: bool = Field(
        default=False,
        description="Platform bookkeeping (e.g. a usage record); listed only with "
        "include_internal, read only",
    )
    cancel_requested_at: datetime | None
    traceback: str | None = Field(
        default=None, description="The last failure's traceback summary (failed, dead, retrying)"
    )
    worker: str | None = Field(default=None, description="The worker running it (or that last did)")
    parent_id: str | None = Field(default=None, description="The job that started this one")
    priority: PriorityName | None = None
    run_at: datetime | None = Field(
        default=None, description="A queued attempt waits until then (a retry's backoff)"
    )
    max_tries: int | None = Field(default=None, description="Tries its retry policy allows")
    schedule_id: uuid.UUID | None = Field(default=None, description="The schedule that started it")
    retried_as: str | None = Field(default=None, description="The job that ran it again")
    children: ChildrenOut | None = Field(
        default=None, description="A parent's children (on GET /v1/jobs/{id} only)"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobList(BaseModel):
    data: list[JobOut]
    has_more: bool


class PurgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than_days: int = Field(
        default=30, ge=0, le=3650, description="Delete finished jobs older than this"
    )


class JobStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        min_length=3, max_length=265, description="A user-startable job type, `<service>.<name>`"
    )
    arguments: dict[str, Any] = Field(
        default_factory=dict, description="Validated against the type's `args_schema`"
    )
    priority: PriorityName | None = Field(
        default=None,
        description="Among the organization's jobs and the others' (default: the type's)",
    )


class RetryMany(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["dead", "failed"] = Field(default="dead", description="Which jobs to retry")
    ids: list[str] | None = Field(
        default=None, max_length=1000, description="These jobs only (else every one matching)"
    )
    service: str | None = Field(default=None, max_length=64)
    function: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=100, ge=1, le=1000)


class RetriedJobs(BaseModel):
    retried: int
    job_ids: list[str] = Field(description="The new jobs, one per job retried")
