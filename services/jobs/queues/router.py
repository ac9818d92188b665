"""Routes of queue monitoring: ``GET /v1/admin/queues`` (platform administrators)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from libs.redis import RedisDep
from services.jobs.queues.schemas import QueueOverview
from services.jobs.queues.service import QueueService, require_platform_admin
from services.jobs.state import JobsState

router = APIRouter(prefix="/v1/admin/queues", tags=["admin"])


async def get_queue_service(
    session: SessionDep, redis: RedisDep, principal: PrincipalDep, request: Request
) -> QueueService:
    state = JobsState.of(request)
    settings = state.settings
    await require_platform_admin(
        principal, state.http, settings.auth_url, settings.internal_token_secret
    )
    return QueueService(session, state.db, redis)


QueueServiceDep = Annotated[QueueService, Depends(get_queue_service)]


@router.get(
    "",
    response_model=QueueOverview,
    summary="Every queue across organizations: depth, oldest wait, running, workers, who "
    "waits most, the last day's outcomes; the platform's schedules",
    dependencies=[require_scope(Scope.ADMIN)],
)
async def queues(service: QueueServiceDep) -> object:
    return await service.overview()
