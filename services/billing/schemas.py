"""Request and response schemas of the billing service.

The usage event contract itself is ``libs.usage.UsageEvent`` (llm and rag build it).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from pydantic import BaseModel


class UsageTotals(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    errors: int = 0
    cached: int = 0


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
