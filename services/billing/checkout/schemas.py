"""Requests and answers of Stripe Checkout, SetupIntents and the customer portal."""

from __future__ import annotations

from datetime import datetime

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from services.billing.subscriptions.schemas import PLAN_ID


class CheckoutCreate(BaseModel):
    """Start a subscription on Stripe's hosted Checkout page."""

    model_config = ConfigDict(extra="forbid")

    plan: str = Field(
        min_length=1,
        max_length=64,
        description="A plan with a stripe_price (GET /v1/billing/plans; else 400)",
        json_schema_extra={"pattern": PLAN_ID},
    )
    success_url: AnyHttpUrl = Field(description="Where Stripe sends the customer once paid")
    cancel_url: AnyHttpUrl | None = Field(
        default=None, description="Where Stripe sends a customer who goes back"
    )


class CheckoutOut(BaseModel):
    id: str = Field(description="The Checkout Session id (cs_...)")
    url: str = Field(description="Stripe's hosted page: send the customer there")
    plan: str
    status: str = Field(description="open, complete or expired")
    expires_at: datetime | None


class SetupIntentOut(BaseModel):
    id: str = Field(description="The SetupIntent id (seti_...)")
    client_secret: str = Field(
        description="For Stripe.js' confirmCardSetup in the browser; the PaymentMethod it "
        "collects is then passed to POST /v1/billing/subscription/stripe"
    )
    status: str


class PortalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    return_url: AnyHttpUrl | None = Field(
        default=None, description="Where the portal's back link leads"
    )


class PortalOut(BaseModel):
    url: str = Field(description="Stripe's customer portal for this organization (short-lived)")
