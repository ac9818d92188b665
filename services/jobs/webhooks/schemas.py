"""Request and response schemas of webhook endpoints, messages and attempts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="http(s), a public address")
    kinds: list[str] = Field(
        default_factory=list, max_length=50, description="Kinds to receive (empty: all)"
    )
    description: str = Field(default="", max_length=500)


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    kinds: list[str] | None = Field(default=None, max_length=50, description="[]: all kinds")
    description: str | None = Field(default=None, max_length=500)


class EndpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    id: uuid.UUID
    url: str
    kinds: list[str]
    description: str
    disabled_at: datetime | None
    failing_since: datetime | None
    previous_expires_at: datetime | None = Field(
        description="Until then the previous secret's signature is sent too (a rotation)"
    )
    created_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="The signing secret (whsec_...): verify with it")


class EndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EndpointOut]


class Rotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_hours: float = Field(
        default=24, ge=0, le=168, description="How long the previous secret stays valid"
    )


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["webhook_message"] = "webhook_message"
    id: uuid.UUID = Field(description="The webhook-id header the endpoint receives")
    event_id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime


class MessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[MessageOut]
    has_more: bool


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["webhook_attempt"] = "webhook_attempt"
    attempt: int
    status_code: int | None = Field(description="None: no answer (see error)")
    error: str | None
    latency_ms: int
    response: str = Field(description="The answer's first 2000 characters")
    created_at: datetime


class AttemptList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AttemptOut]
