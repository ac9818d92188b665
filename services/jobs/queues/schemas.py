"""Response schemas of the queue overview (platform administrators)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class WorkerOut(BaseModel):
    id: str
    host: str | None = None
    pid: int | None = None
    running: int = 0
    max_jobs: int = 0
    started_at: datetime | None = None
    seen_at: datetime | None = None


class WaitingOut(BaseModel):
    org_id: uuid.UUID | None = Field(description="None: platform work")
    function: str
    priority: str
    waiting: int


class QueueOut(BaseModel):
    queue: str
    ready: int = Field(description="Jobs that can start now")
    deferred: int = Field(description="Jobs waiting for a time: retries' backoff, deferred jobs")
    fair: int = Field(description="Jobs waiting their organization's turn")
    running: int
    oldest_waiting_s: float = Field(description="Age of the oldest ready or waiting job")
    workers: list[WorkerOut]
    top_waiting: list[WaitingOut] = Field(description="Who has the most jobs waiting their turn")
    last_24h: dict[str, int] = Field(description="Jobs created in the last 24 hours, by status")


class PlatformScheduleOut(BaseModel):
    key: str | None
    name: str
    type: str
    cron: str
    timezone: str
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_job_id: str | None
    runs: int


class QueueOverview(BaseModel):
    queues: list[QueueOut]
    schedules: list[PlatformScheduleOut] = Field(description="Schedules declared in code")
