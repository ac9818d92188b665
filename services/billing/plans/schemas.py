"""Response and request schemas of plans and subscriptions."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.entitlements import Entitlements
from services.billing.plans.catalogue import Plan


class PlanList(BaseModel):
    object: Literal["list"] = "list"
    default: str = Field(description="The plan of a new organization")
    data: list[Plan]


class LimitUsage(BaseModel):
    """One limit of the plan and what the organization used of it this period."""

    name: str
    limit: Decimal | int | None = Field(description="null: unlimited")
    used: Decimal | int | None = Field(description="null: not metered by billing")
    period: Literal["minute", "month", "now"]


class SubscriptionOut(BaseModel):
    object: Literal["subscription"] = "subscription"
    plan: str
    status: str
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    monthly_budget_usd: Decimal | None = Field(description="The admin's own budget, if set")
    entitlements: Entitlements
    usage: list[LimitUsage]


class SubscriptionUpdate(BaseModel):
    """An admin's change: another plan (a self-hosted deployment without Stripe), or a
    monthly budget under the plan's (null: the plan's)."""

    model_config = ConfigDict(extra="forbid")

    plan: str | None = Field(default=None, max_length=64)
    monthly_budget_usd: Decimal | None = Field(default=None, ge=0, max_digits=18, decimal_places=8)
