"""HTTP routes of Stripe Checkout, SetupIntents and the customer portal: admins only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.billing.checkout.schemas import (
    CheckoutCreate,
    CheckoutOut,
    PortalCreate,
    PortalOut,
    SetupIntentOut,
)
from services.billing.checkout.service import CheckoutService
from services.billing.state import BillingState
from services.billing.subscriptions.service import SubscriptionService

router = APIRouter(prefix="/v1/billing", tags=["billing"])


async def get_checkout_service(
    request: Request, session: SessionDep, principal: PrincipalDep
) -> CheckoutService:
    state = BillingState.of(request)
    subs = SubscriptionService(session, state.redis, state.plans, principal, state.settings)
    return CheckoutService(subs)


CheckoutServiceDep = Annotated[CheckoutService, Depends(get_checkout_service)]


@router.post(
    "/checkout",
    response_model=CheckoutOut,
    status_code=201,
    summary="Start a subscription on Stripe's hosted Checkout page (its url)",
    dependencies=[require_scope(Scope.ADMIN)],
)
async def create_checkout(body: CheckoutCreate, service: CheckoutServiceDep) -> object:
    return await service.checkout(body)


@router.post(
    "/setup_intent",
    response_model=SetupIntentOut,
    status_code=201,
    summary="A SetupIntent to collect a card with Stripe.js, for subscribing through the API",
    dependencies=[require_scope(Scope.ADMIN)],
)
async def create_setup_intent(service: CheckoutServiceDep) -> object:
    return await service.setup_intent()


@router.post(
    "/portal",
    response_model=PortalOut,
    summary="A link to Stripe's customer portal (cards, invoices, plan) for this organization",
    dependencies=[require_scope(Scope.ADMIN)],
)
async def create_portal(service: CheckoutServiceDep, body: PortalCreate | None = None) -> object:
    return await service.portal(body or PortalCreate())
