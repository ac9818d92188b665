"""Request and response schemas of schedules."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Missed = Literal["skip", "run_once"]
PriorityName = Literal["high", "normal", "low"]

_CRON = (
    "Five fields (minute hour day month weekday), or @hourly, @daily, @weekly, @monthly, "
    "@yearly; in `timezone`"
)
_MISSED = (
    "Ticks missed while nothing ran (everything down): `skip` them, or `run_once` for all "
    "of them when it is back"
)


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    type: str = Field(min_length=3, max_length=265, description="A schedulable job type")
    arguments: dict[str, Any] = Field(default_factory=dict)
    cron: str = Field(min_length=1, max_length=200, description=_CRON)
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA name")
    missed: Missed = Field(default="skip", description=_MISSED)
    priority: PriorityName | None = None
    paused: bool = False


class ScheduleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    arguments: dict[str, Any] | None = None
    cron: str | None = Field(default=None, min_length=1, max_length=200, description=_CRON)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    missed: Missed | None = None
    priority: PriorityName | None = None


class ScheduleOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    type: str
    arguments: dict[str, Any]
    cron: str
    timezone: str
    missed: Missed
    priority: PriorityName | None
    paused: bool
    next_run_at: datetime | None = Field(description="The next tick (none while paused)")
    next_runs: list[datetime] = Field(description="The next five ticks")
    last_run_at: datetime | None = Field(description="The tick of the last run it made")
    last_job_id: str | None
    runs: int = Field(description="Runs it made")
    created_at: datetime
    updated_at: datetime


class ScheduleList(BaseModel):
    data: list[ScheduleOut]
    has_more: bool
