"""Request and response schemas of job types."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class RetryPolicyOut(BaseModel):
    max_tries: int = Field(description="Tries in all before the job is a dead letter")
    backoff_s: float = Field(description="Wait before the second try")
    multiplier: float = Field(description="Each wait is this many times the one before")
    max_backoff_s: float
    jitter: float = Field(description="Each wait is drawn in [wait * (1 - jitter), wait]")
    retry_on: list[str] = Field(description="Errors that are tried again (none: only crashes)")
    give_up_on: list[str]


class JobTypeOut(BaseModel):
    type: str = Field(description="`<service>.<name>`: what `POST /v1/jobs` takes")
    service: str
    name: str
    description: str = ""
    args_schema: dict[str, Any] = Field(description="JSON Schema of the job's `arguments`")
    user_startable: bool = Field(description="Users may start it with `POST /v1/jobs`")
    scope: str = Field(description="The scope starting it needs")
    schedulable: bool = Field(description="It may run on a schedule")
    retry: RetryPolicyOut | None = None
    concurrency: int | None = Field(
        default=None, description="Most jobs of this type one organization has running at once"
    )
    priority: str = "normal"
    internal: bool = False
    timeout_s: float | None = None
    published_at: datetime = Field(description="When a worker running it last declared it")


class JobTypeList(BaseModel):
    data: list[JobTypeOut]
