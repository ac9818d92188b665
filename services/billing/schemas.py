"""Request and response schemas of the billing service.

The usage event contract itself is ``libs.usage.UsageEvent`` (llm and rag build it).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from pydantic import BaseModel, field_serializer

_CENT_FRACTIONS = Decimal("0.00000001")


class UsageTotals(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    errors: int = 0
    cached: int = 0
    # streams the client left early (charged for the tokens streamed until then)
    cancelled: int = 0

    @field_serializer("cost_usd")
    def _fixed_point(self, value: Decimal) -> str:
        # a plain decimal string ("0.00000000", not "0E-8") that any JSON client can parse
        return format(value.quantize(_CENT_FRACTIONS), "f")


class UsageByModel(UsageTotals):
    model: str


class UsageByDayModel(UsageTotals):
    day: date
    model: str


class UsageReport(BaseModel):
    start: date
    end: date
    totals: UsageTotals
    by_model: list[UsageByModel]
    data: list[UsageByDayModel]
