"""Request and response schemas of the usage reports.

The usage event contract itself is ``libs.usage.UsageEvent`` (llm, rag and jobs build it).
"""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field, field_serializer

_CENT_FRACTIONS = Decimal("0.00000001")

GroupBy = Literal["day", "model", "kind", "provider", "key_id", "user_id"]
ExportFormat = Literal["csv", "jsonl"]


def fixed_point(value: Decimal) -> str:
    """A plain decimal string ("0.00000000", not "0E-8") that any JSON client can parse."""
    return format(value.quantize(_CENT_FRACTIONS), "f")


class UsageTotals(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = Field(default=0, description="Of prompt_tokens, read from a cache")
    cost_usd: Decimal = Decimal(0)
    errors: int = 0
    cached: int = 0
    # streams the client left early (charged for the tokens streamed until then)
    cancelled: int = 0
    batch: int = Field(default=0, description="Requests made for Batch API lines")

    @field_serializer("cost_usd")
    def _fixed_point(self, value: Decimal) -> str:
        return fixed_point(value)


class UsageByModel(UsageTotals):
    model: str


class UsageRow(UsageTotals):
    """One group's sums: the fields named in ``group_by`` are set, the others null."""

    day: date | None = None
    model: str | None = None
    kind: str | None = None
    provider: str | None = None
    key_id: uuid.UUID | None = Field(default=None, description="null: a user's session")
    user_id: uuid.UUID | None = Field(default=None, description="null: no user")
    storage_bytes: int | None = Field(
        default=None, description="kind storage: the largest daily sample in the group"
    )


class UsageReport(BaseModel):
    start: date
    end: date
    group_by: list[GroupBy]
    totals: UsageTotals
    by_model: list[UsageByModel]
    data: list[UsageRow]
