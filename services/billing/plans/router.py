"""HTTP routes of plans and subscriptions."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.billing.plans.schemas import PlanList, SubscriptionOut, SubscriptionUpdate
from services.billing.plans.service import PlanService
from services.billing.state import BillingState

router = APIRouter(prefix="/v1/billing", tags=["billing"])


async def get_plan_service(
    request: Request, session: SessionDep, principal: PrincipalDep
) -> PlanService:
    state = BillingState.of(request)
    grace = timedelta(days=state.settings.past_due_grace_days)
    return PlanService(session, state.redis, state.plans, principal, grace)


PlanServiceDep = Annotated[PlanService, Depends(get_plan_service)]


@router.get(
    "/plans",
    response_model=PlanList,
    summary="The plans on offer: features, limits, price, trial days, overage policy",
    dependencies=[require_scope(Scope.BILLING_READ)],
)
async def list_plans(service: PlanServiceDep) -> object:
    return service.list_plans()


@router.get(
    "/subscription",
    response_model=SubscriptionOut,
    summary="The organization's plan, status, period, entitlements and usage of each limit",
    dependencies=[require_scope(Scope.BILLING_READ)],
)
async def get_subscription(service: PlanServiceDep) -> object:
    return await service.show()


@router.patch(
    "/subscription",
    response_model=SubscriptionOut,
    summary="Change the plan (without Stripe) or set a monthly budget under the plan's (admin)",
    dependencies=[require_scope(Scope.ADMIN)],
)
async def update_subscription(body: SubscriptionUpdate, service: PlanServiceDep) -> object:
    return await service.update(body)
