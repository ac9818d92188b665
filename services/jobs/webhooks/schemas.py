"""Request and response schemas of webhook endpoints, messages and attempts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict, JsonValue

from libs.notify import KINDS

# what delivery.check_url accepts, as a pattern (a subset: DNS names only, no IP literal, no
# port above 9999): http(s), no credentials, a host whose labels are letters, digits,
# underscores and inner hyphens, the last one not a number
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_LAST = r"[A-Za-z_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
URL_PATTERN = rf"^https?://({_LABEL}\.){{0,3}}{_LAST}(:[0-9]{{1,4}})?([/?#][!-~]*)?$"
URL_DESCRIPTION = (
    "http(s) with a valid host name or IP address, no credentials; unless the platform allows "
    "private targets (development), its host must resolve to public addresses only (else 400 "
    "invalid_url)"
)
WEBHOOK_KINDS: list[JsonValue] = [*sorted(k for k, spec in KINDS.items() if spec.webhook)]
KINDS_SCHEMA: JsonDict = {"items": {"type": "string", "enum": WEBHOOK_KINDS}}


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2048,
        description=URL_DESCRIPTION,
        json_schema_extra={"format": "uri", "pattern": URL_PATTERN},
        examples=["https://example.com/hooks/aistack"],
    )
    kinds: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Kinds to receive (empty: all); else 400 unknown_kind",
        json_schema_extra=KINDS_SCHEMA,
    )
    description: str = Field(default="", max_length=500)


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description=URL_DESCRIPTION,
        json_schema_extra={
            "anyOf": [{"type": "string", "format": "uri", "pattern": URL_PATTERN}, {"type": "null"}]
        },
    )
    kinds: list[str] | None = Field(
        default=None,
        max_length=50,
        description="[]: all kinds; else 400 unknown_kind",
        json_schema_extra={
            "anyOf": [{"type": "array", "maxItems": 50, **KINDS_SCHEMA}, {"type": "null"}]
        },
    )
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
