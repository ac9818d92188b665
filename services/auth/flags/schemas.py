"""Request and response schemas of feature flags."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from services.auth.core.schemas import Body

FlagKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,99}$")]


class FlagIn(Body):
    enabled: bool
    description: str = Field(default="", max_length=2000)
    rollout_percentage: int = Field(default=100, ge=0, le=100)
    org_overrides: dict[uuid.UUID, bool] = Field(default_factory=dict, max_length=10_000)


class FlagOut(BaseModel):
    key: str
    description: str
    enabled: bool
    rollout_percentage: int
    org_overrides: dict[str, bool]
    updated_at: datetime


class FlagList(BaseModel):
    data: list[FlagOut]


class EvaluatedFlags(BaseModel):
    org_id: uuid.UUID
    flags: dict[str, bool]
