"""Request and response schemas of API keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.permissions import ALL_SCOPES
from services.auth.core.schemas import Body, Name


class ApiKeyCreate(Body):
    name: Name
    scopes: list[str] = Field(min_length=1, max_length=len(ALL_SCOPES))
    expires_at: datetime | None = None
    rpm_limit: int | None = Field(default=None, ge=1, le=1_000_000)
    tpm_limit: int | None = Field(default=None, ge=1, le=1_000_000_000)

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - ALL_SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(unknown)}")
        return sorted(set(v))

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("expires_at needs a time zone (e.g. 2030-01-01T00:00:00Z)")
        return v


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    org_id: uuid.UUID
    user_id: uuid.UUID | None
    name: str
    prefix: str
    scopes: list[str]
    expires_at: datetime | None
    rpm_limit: int | None
    tpm_limit: int | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class ApiKeyCreated(ApiKeyOut):
    # the full key, shown once
    key: str


class ApiKeyList(BaseModel):
    data: list[ApiKeyOut]
    has_more: bool


class IntrospectIn(Body):
    key: str = Field(max_length=512)


class IntrospectOut(BaseModel):
    active: bool
    key_id: uuid.UUID | None = None
    org_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    scopes: list[str] | None = None
    expires_at: datetime | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    plan: str | None = None
