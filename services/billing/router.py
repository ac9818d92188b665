"""HTTP routes of the billing service."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from libs.db import SessionDep
from libs.identity import Principal, require_scope
from services.billing.schemas import UsageReport
from services.billing.service import UsageService

router = APIRouter(prefix="/v1/billing", tags=["billing"])

ReadPrincipal = Annotated[Principal, require_scope("billing:read")]


@router.get(
    "/usage",
    response_model=UsageReport,
    summary="Usage totals per model and UTC day (start and end inclusive; default last 30 days)",
)
async def get_usage(
    session: SessionDep,
    principal: ReadPrincipal,
    start: Annotated[date | None, Query(description="First day (UTC), YYYY-MM-DD")] = None,
    end: Annotated[date | None, Query(description="Last day (UTC), YYYY-MM-DD")] = None,
) -> object:
    return await UsageService(session, principal).report(start, end)
