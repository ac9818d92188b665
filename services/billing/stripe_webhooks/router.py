"""Stripe's webhook endpoint: public at the gateway (Stripe cannot present aistack
credentials); the signature is what is checked."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request

from libs.db import SessionDep
from services.billing.state import BillingState
from services.billing.stripe_webhooks.schemas import WebhookAck
from services.billing.stripe_webhooks.service import receive

router = APIRouter(prefix="/v1/billing/webhooks", tags=["billing"])


@router.post(
    "/stripe",
    response_model=WebhookAck,
    summary="Stripe webhook events (signature checked; each event id applied once)",
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}
    },
)
async def stripe_webhook(
    request: Request,
    session: SessionDep,
    stripe_signature: Annotated[str, Header(description="Stripe's signature header")] = "",
) -> object:
    state = BillingState.of(request)
    payload = await request.body()
    return await receive(session, state.redis, state.settings, payload, stripe_signature)
