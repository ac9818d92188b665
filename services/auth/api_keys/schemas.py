"""Request and response schemas of API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator
from pydantic.json_schema import JsonDict

from libs.permissions import ALL_SCOPES
from services.auth.core.schemas import Body, Name

# a key's budget, in USD (a Redis budget counter holds up to about 90 million USD exactly)
MAX_BUDGET_USD = Decimal(10_000_000)


def _plain(value: Decimal | None) -> str | None:
    """A budget as its shortest exact decimal ("12.5", not "12.50000000" as stored)."""
    return None if value is None else format(value.normalize(), "f")


# a budget in requests: a number or a decimal string, at most 8 decimal places
BUDGET_SCHEMA: JsonDict = {
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": int(MAX_BUDGET_USD), "multipleOf": 1e-8},
        {
            "type": "string",
            "pattern": r"^0*(\d{1,7}(\.\d{1,8})?|10000000(\.0{1,8})?)$",
            "examples": ["12.5"],
        },
        {"type": "null"},
    ]
}
SCOPES_SCHEMA: JsonDict = {"items": {"type": "string", "enum": [*sorted(ALL_SCOPES)]}}


def _not_null(schema: dict[str, Any]) -> None:
    """Publish an optional field as never null: null is refused (422) where it means nothing."""
    schema.pop("anyOf", None)
    schema.update(type="string", minLength=1, maxLength=200)


# a budget in answers: an exact decimal string, as billing's amounts are
BudgetOut = Annotated[Decimal | None, PlainSerializer(_plain, return_type=str | None)]
# a budget in requests (null: none of the key's own)
BudgetIn = Annotated[
    Decimal | None,
    Field(ge=0, le=MAX_BUDGET_USD, decimal_places=8, json_schema_extra=BUDGET_SCHEMA),
]


class ApiKeyCreate(Body):
    name: Name
    scopes: list[str] = Field(
        min_length=1, max_length=len(ALL_SCOPES), json_schema_extra=SCOPES_SCHEMA
    )
    expires_at: datetime | None = Field(
        default=None, description="In the future, with a time zone (e.g. 2030-01-01T00:00:00Z)"
    )
    rpm_limit: int | None = Field(default=None, ge=1, le=1_000_000)
    tpm_limit: int | None = Field(default=None, ge=1, le=1_000_000_000)
    monthly_budget_usd: BudgetIn = Field(
        default=None,
        description="What calls made with this key may spend per budget period (the "
        "organization's billing month), on top of the organization's own budget, in USD with "
        "at most 8 decimal places; null: no budget of its own. A call that would pass it is "
        "refused with 429 insufficient_quota",
    )

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


# the fields sent change; one sent as null clears it (no limit of the key's own)
class ApiKeyUpdate(Body):
    name: Name | None = Field(default=None, json_schema_extra=_not_null)
    rpm_limit: int | None = Field(default=None, ge=1, le=1_000_000)
    tpm_limit: int | None = Field(default=None, ge=1, le=1_000_000_000)
    monthly_budget_usd: BudgetIn = Field(
        default=None, description="In USD, at most 8 decimal places; null clears it"
    )


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
    monthly_budget_usd: BudgetOut
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
    monthly_budget_usd: BudgetOut = None
    plan: str | None = None
