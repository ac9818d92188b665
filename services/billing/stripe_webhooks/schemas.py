"""What the Stripe webhook endpoint answers."""

from __future__ import annotations

from pydantic import BaseModel, Field


class WebhookAck(BaseModel):
    received: bool = True
    duplicate: bool = Field(description="The event id was received before: not applied again")
