"""Request and response schemas of the jobs service."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


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
