"""HTTP routes of the usage ledger: reports and exports."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from libs.state import AppState
from libs.usage import UsageKind
from services.billing.usage.schemas import ExportFormat, GroupBy, UsageReport
from services.billing.usage.service import UsageFilters, UsageService, day_range, export_lines

router = APIRouter(prefix="/v1/billing", tags=["billing"])


async def get_usage_service(session: SessionDep, principal: PrincipalDep) -> UsageService:
    return UsageService(session, principal)


UsageServiceDep = Annotated[UsageService, Depends(get_usage_service)]

StartQ = Annotated[date | None, Query(description="First day (UTC), YYYY-MM-DD")]
EndQ = Annotated[date | None, Query(description="Last day (UTC), YYYY-MM-DD")]
KeyQ = Annotated[uuid.UUID | None, Query(description="Only this API key's usage")]
UserQ = Annotated[uuid.UUID | None, Query(description="Only this user's usage")]
ModelQ = Annotated[str | None, Query(max_length=200, description="Only this model")]
KindQ = Annotated[UsageKind | None, Query(description="Only this kind of usage")]


@router.get(
    "/usage",
    response_model=UsageReport,
    summary="Usage totals of the organization (start and end inclusive; default last 30 days)",
    description="Read from daily rollups: grouped by any of day, model, kind, provider, "
    "key_id and user_id (default day and model), filtered by key, user, model and kind.",
    dependencies=[require_scope(Scope.BILLING_READ)],
)
async def get_usage(
    service: UsageServiceDep,
    start: StartQ = None,
    end: EndQ = None,
    key_id: KeyQ = None,
    user_id: UserQ = None,
    model: ModelQ = None,
    kind: KindQ = None,
    group_by: Annotated[
        list[GroupBy] | None, Query(description="Repeat to group by several fields")
    ] = None,
) -> object:
    filters = UsageFilters(key_id=key_id, user_id=user_id, model=model, kind=kind)
    return await service.report(start, end, group_by=group_by, filters=filters)


@router.get(
    "/usage/export",
    summary="Every usage event of a range, streamed as CSV or JSON lines",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}},
    dependencies=[require_scope(Scope.BILLING_READ)],
)
async def export_usage(
    request: Request,
    principal: PrincipalDep,
    start: StartQ = None,
    end: EndQ = None,
    key_id: KeyQ = None,
    user_id: UserQ = None,
    model: ModelQ = None,
    kind: KindQ = None,
    format: Annotated[ExportFormat, Query(description="csv or jsonl")] = "csv",
) -> StreamingResponse:
    first, last = day_range(start, end)
    filters = UsageFilters(key_id=key_id, user_id=user_id, model=model, kind=kind)
    body = export_lines(
        AppState.of(request).db, principal.require_org(), first, last, filters, format
    )
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    name = f"usage-{first.isoformat()}-{last.isoformat()}.{format}"
    return StreamingResponse(
        body,
        media_type=media,
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )
