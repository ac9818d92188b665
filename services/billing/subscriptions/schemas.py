"""Requests of paid subscriptions (Stripe)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# a plan's id, as the plan catalogue requires it (services/billing/plans/catalogue.py)
PLAN_ID = r"^[a-z0-9][a-z0-9_-]*$"


class StripeSubscribe(BaseModel):
    """Subscribe to a plan, or move a paid subscription to another plan (prorated)."""

    model_config = ConfigDict(extra="forbid")

    plan: str = Field(
        min_length=1,
        max_length=64,
        description="A plan with a stripe_price (GET /v1/billing/plans; else 400)",
        json_schema_extra={"pattern": PLAN_ID},
    )
    payment_method: str | None = Field(
        default=None,
        max_length=255,
        description="A Stripe PaymentMethod id (pm_..., collected with a SetupIntent) to pay "
        "with; one Stripe does not know for this customer is refused (400)",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "maxLength": 255, "pattern": r"^(pm|card|src)_[A-Za-z0-9]+$"},
                {"type": "null"},
            ]
        },
    )
