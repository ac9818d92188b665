"""HTTP routes of paid subscriptions (Stripe): admins only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.billing.plans.schemas import SubscriptionOut
from services.billing.state import BillingState
from services.billing.subscriptions.schemas import StripeSubscribe
from services.billing.subscriptions.service import SubscriptionService

router = APIRouter(prefix="/v1/billing/subscription", tags=["billing"])


async def get_subscription_service(
    request: Request, session: SessionDep, principal: PrincipalDep
) -> SubscriptionService:
    state = BillingState.of(request)
    return SubscriptionService(session, state.redis, state.plans, principal, state.settings)


SubscriptionServiceDep = Annotated[SubscriptionService, Depends(get_subscription_service)]


@router.post(
    "/stripe",
    response_model=SubscriptionOut,
    summary="Subscribe to a plan through Stripe, or move to another plan (prorated)",
    dependencies=[require_scope(Scope.ADMIN)],
)
async def subscribe(body: StripeSubscribe, service: SubscriptionServiceDep) -> object:
    return await service.subscribe(body)


@router.post(
    "/cancel",
    response_model=SubscriptionOut,
    summary="Cancel the paid subscription at the end of its period",
    dependencies=[require_scope(Scope.ADMIN)],
)
async def cancel(service: SubscriptionServiceDep) -> object:
    return await service.set_cancel(True)


@router.post(
    "/resume",
    response_model=SubscriptionOut,
    summary="Keep a subscription that was to end with its period",
    dependencies=[require_scope(Scope.ADMIN)],
)
async def resume(service: SubscriptionServiceDep) -> object:
    return await service.set_cancel(False)
