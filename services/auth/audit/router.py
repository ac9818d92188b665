"""Routes of the audit log (an organization's owners and admins)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from services.auth.audit.repository import AuditFilter
from services.auth.audit.schemas import AuditList
from services.auth.audit.service import AuditService
from services.auth.core.context import ContextDep


async def get_audit_service(ctx: ContextDep) -> AuditService:
    return AuditService(ctx)


AuditServiceDep = Annotated[AuditService, Depends(get_audit_service)]

# under the organization it belongs to
router = APIRouter(prefix="/v1/orgs", tags=["organizations"])


@router.get("/{org_id}/audit", response_model=AuditList, summary="Audit log (owners and admins)")
async def list_audit(
    org_id: uuid.UUID,
    svc: AuditServiceDep,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> object:
    filters = AuditFilter(action=action, actor=actor, since=since, until=until)
    rows, has_more = await svc.list_audit(org_id, filters, limit=limit, offset=offset)
    return {"data": rows, "has_more": has_more}
