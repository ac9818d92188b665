"""Routes of job types: ``GET /v1/jobs/types``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.jobs.types.schemas import JobTypeList, JobTypeOut
from services.jobs.types.service import JobTypeService, type_out

router = APIRouter(prefix="/v1/jobs/types", tags=["jobs"])


async def get_job_type_service(session: SessionDep, principal: PrincipalDep) -> JobTypeService:
    return JobTypeService(session, principal)


JobTypeServiceDep = Annotated[JobTypeService, Depends(get_job_type_service)]


@router.get(
    "",
    response_model=JobTypeList,
    summary="Job types the workers declare: arguments, who may start them, retry policy",
    dependencies=[require_scope(Scope.JOBS_READ)],
)
async def list_job_types(service: JobTypeServiceDep) -> object:
    return {"data": await service.list()}


@router.get(
    "/{job_type}",
    response_model=JobTypeOut,
    summary="One job type (`<service>.<name>`)",
    dependencies=[require_scope(Scope.JOBS_READ)],
)
async def get_job_type(job_type: str, service: JobTypeServiceDep) -> object:
    return type_out(await service.get(job_type))
