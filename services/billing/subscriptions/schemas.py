"""Requests of paid subscriptions (Stripe)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StripeSubscribe(BaseModel):
    """Subscribe to a plan, or move a paid subscription to another plan (prorated)."""

    model_config = ConfigDict(extra="forbid")

    plan: str = Field(min_length=1, max_length=64, description="A plan with a stripe_price")
    payment_method: str | None = Field(
        default=None,
        max_length=255,
        description="A Stripe PaymentMethod id (collected with a SetupIntent) to pay with",
    )
