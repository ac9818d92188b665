"""Routes of schedules: ``/v1/jobs/schedules``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.jobs.jobs.schemas import JobList
from services.jobs.schedules.schemas import (
    ScheduleCreate,
    ScheduleList,
    ScheduleOut,
    ScheduleUpdate,
)
from services.jobs.schedules.service import ScheduleService, schedule_out
from services.jobs.state import JobsState

router = APIRouter(prefix="/v1/jobs/schedules", tags=["schedules"])

READ = [require_scope(Scope.JOBS_READ)]
WRITE = [require_scope(Scope.JOBS_WRITE)]


async def get_schedule_service(
    session: SessionDep, principal: PrincipalDep, request: Request
) -> ScheduleService:
    settings = JobsState.of(request).settings
    return ScheduleService(session, principal, max_per_org=settings.max_schedules_per_org)


ScheduleServiceDep = Annotated[ScheduleService, Depends(get_schedule_service)]


@router.post(
    "",
    status_code=201,
    response_model=ScheduleOut,
    summary="Run a job type on a cron schedule (in a time zone)",
    dependencies=WRITE,
)
async def create_schedule(body: ScheduleCreate, service: ScheduleServiceDep) -> object:
    return schedule_out(await service.create(body))


@router.get(
    "", response_model=ScheduleList, summary="The organization's schedules", dependencies=READ
)
async def list_schedules(
    service: ScheduleServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> object:
    rows, has_more = await service.page(limit=limit, offset=offset)
    return {"data": [schedule_out(s) for s in rows], "has_more": has_more}


@router.get("/{schedule_id}", response_model=ScheduleOut, summary="One schedule", dependencies=READ)
async def get_schedule(schedule_id: uuid.UUID, service: ScheduleServiceDep) -> object:
    return schedule_out(await service.get(schedule_id))


@router.patch(
    "/{schedule_id}", response_model=ScheduleOut, summary="Change a schedule", dependencies=WRITE
)
async def update_schedule(
    schedule_id: uuid.UUID, body: ScheduleUpdate, service: ScheduleServiceDep
) -> object:
    return schedule_out(await service.update(schedule_id, body))


@router.post(
    "/{schedule_id}/pause",
    response_model=ScheduleOut,
    summary="Pause a schedule (no ticks fire until it resumes)",
    dependencies=WRITE,
)
async def pause_schedule(schedule_id: uuid.UUID, service: ScheduleServiceDep) -> object:
    return schedule_out(await service.pause(schedule_id))


@router.post(
    "/{schedule_id}/resume",
    response_model=ScheduleOut,
    summary="Resume a schedule from its next tick (ticks passed meanwhile do not fire)",
    dependencies=WRITE,
)
async def resume_schedule(schedule_id: uuid.UUID, service: ScheduleServiceDep) -> object:
    return schedule_out(await service.resume(schedule_id))


@router.delete("/{schedule_id}", status_code=204, summary="Delete a schedule", dependencies=WRITE)
async def delete_schedule(schedule_id: uuid.UUID, service: ScheduleServiceDep) -> Response:
    await service.delete(schedule_id)
    return Response(status_code=204)


@router.get(
    "/{schedule_id}/runs",
    response_model=JobList,
    summary="The jobs a schedule started, newest first",
    dependencies=READ,
)
async def schedule_runs(
    schedule_id: uuid.UUID,
    service: ScheduleServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> object:
    rows, has_more = await service.runs(schedule_id, limit=limit, offset=offset)
    return {"data": rows, "has_more": has_more}
