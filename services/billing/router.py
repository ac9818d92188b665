"""HTTP routes of the billing service."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.billing.schemas import UsageReport
from services.billing.service import UsageService

router = APIRouter(prefix="/v1/billing", tags=["billing"])


async def get_usage_service(session: SessionDep, principal: PrincipalDep) -> UsageService:
    return UsageService(session, principal)


UsageServiceDep = Annotated[UsageService, Depends(get_usage_service)]


@router.get(
    "/usage",
    response_model=UsageReport,
    summary="Usage totals per model and UTC day (start and end inclusive; default last 30 days)",
    dependencies=[require_scope(Scope.BILLING_READ)],
)
async def get_usage(
    service: UsageServiceDep,
    start: Annotated[date | None, Query(description="First day (UTC), YYYY-MM-DD")] = None,
    end: Annotated[date | None, Query(description="Last day (UTC), YYYY-MM-DD")] = None,
) -> object:
    return await service.report(start, end)
