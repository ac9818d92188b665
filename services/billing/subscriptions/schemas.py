"""Requests of paid subscriptions (Stripe)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

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


class InvoiceOut(BaseModel):
    id: str
    status: str | None
    currency: str | None
    amount_due: int = Field(description="In the currency's smallest unit (cents)")
    amount_paid: int
    created: datetime | None
    hosted_invoice_url: str | None = Field(description="Stripe's page to see and pay it")
    invoice_pdf: str | None


class InvoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[InvoiceOut]
