"""Routes of the organization's jobs: list, start, get, cancel, retry, progress stream."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from libs.redis import RedisDep
from libs.sse import SSEResponse, sse_responses
from services.jobs.jobs.repository import JobRepository
from services.jobs.jobs.schemas import (
    JobList,
    JobOut,
    JobStart,
    JobStatusName,
    PurgeRequest,
    RetriedJobs,
    RetryMany,
)
from services.jobs.jobs.service import JobService
from services.jobs.jobs.stream import LAST_EVENT_AT
from services.jobs.jobs.stream import job_events as stream_job_events
from services.jobs.state import JobsState
from services.jobs.types.service import JobTypeService

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

READ = [require_scope(Scope.JOBS_READ)]
WRITE = [require_scope(Scope.JOBS_WRITE)]
ADMIN = [require_scope(Scope.ADMIN)]
# most children a parent's progress stream keeps track of
MAX_STREAMED_CHILDREN = 10_000


async def get_job_service(
    session: SessionDep, redis: RedisDep, principal: PrincipalDep
) -> JobService:
    return JobService(session, principal, redis)


JobServiceDep = Annotated[JobService, Depends(get_job_service)]


@router.get("", response_model=JobList, summary="List the organization's jobs", dependencies=READ)
async def list_jobs(
    service: JobServiceDep,
    status: Annotated[
        JobStatusName | None,
        Query(description="`dead`: the dead letters (out of tries under their retry policy)"),
    ] = None,
    service_name: Annotated[str | None, Query(alias="service", max_length=64)] = None,
    retried: Annotated[
        bool | None, Query(description="Only jobs already run again (true) or not yet (false)")
    ] = None,
    parent_id: Annotated[
        str | None, Query(max_length=255, description="Only the children of this job")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    include_internal: Annotated[
        bool,
        Query(
            description="Also list internal jobs (platform bookkeeping such as one usage "
            "record per LLM call); needs the admin scope"
        ),
    ] = False,
) -> object:
    rows, has_more = await service.page(
        status=status,
        service=service_name,
        limit=limit,
        offset=offset,
        include_internal=include_internal,
        retried=retried,
        parent_id=parent_id,
    )
    return {"data": rows, "has_more": has_more}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Start a job of a user-startable type (see GET /v1/jobs/types)",
    dependencies=WRITE,
)
async def start_job(
    body: JobStart, service: JobServiceDep, session: SessionDep, principal: PrincipalDep
) -> object:
    job_type = await JobTypeService(session, principal).startable(body.type)
    return await service.start(job_type, body.arguments, body.priority)


@router.post(
    "/retry",
    response_model=RetriedJobs,
    summary="Retry dead letters (or failed jobs) in bulk: each becomes a new job, once",
    dependencies=WRITE,
)
async def retry_jobs(body: RetryMany, service: JobServiceDep) -> object:
    ids = await service.retry_many(
        status=body.status,
        ids=body.ids,
        service=body.service,
        function=body.function,
        limit=body.limit,
    )
    return {"retried": len(ids), "job_ids": ids}


@router.post(
    "/maintenance/purge",
    status_code=202,
    response_model=JobOut,
    summary="Enqueue a job deleting the organization's finished jobs older than N days",
    dependencies=ADMIN,
)
async def purge_jobs(body: PurgeRequest, service: JobServiceDep) -> object:
    return await service.purge(body.older_than_days)


@router.get("/{job_id}", response_model=JobOut, summary="Get a job", dependencies=READ)
async def get_job(job_id: str, service: JobServiceDep) -> object:
    job = await service.get(job_id)
    out = JobOut.model_validate(job)
    children = await service.children(job)
    return out.model_copy(update={"children": children}) if children else out


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Cancel a queued or running job (409 once it finished)",
    dependencies=WRITE,
)
async def cancel_job(job_id: str, service: JobServiceDep) -> object:
    return await service.cancel(job_id)


@router.post(
    "/{job_id}/retry",
    status_code=201,
    response_model=JobOut,
    summary="Run a failed, dead or cancelled job again as a new job (linked by retry_of)",
    dependencies=WRITE,
)
async def retry_job(job_id: str, service: JobServiceDep) -> object:
    return await service.retry(job_id)


@router.get(
    "/{job_id}/events",
    summary="Progress as Server-Sent Events, pushed as the job reports it (`progress`, "
    "`children`, then `end`); reconnect with `Last-Event-ID` to resume",
    response_class=SSEResponse,
    responses=sse_responses(
        "`progress` events (the job), `children` (a parent's children), then one `end`; each "
        "pushed event has an `id` to resume from with `Last-Event-ID`"
    ),
    dependencies=READ,
)
async def job_events(
    job_id: str,
    request: Request,
    service: JobServiceDep,
    redis: RedisDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> SSEResponse:
    job = await service.get(job_id)
    org_id = job.org_id
    state = JobsState.of(request)
    factory = state.db

    async def load() -> tuple[dict[str, Any] | None, dict[str, tuple[str, int]]]:
        async with factory() as s:
            repo = JobRepository(s)
            row = await repo.get_for_org(org_id, job_id) if org_id else None
            if row is None:
                return None, {}
            snapshot = JobOut.model_validate(row).model_dump(mode="json")
            snapshot[LAST_EVENT_AT] = row.last_event_at
            children = await repo.children_states(job_id, MAX_STREAMED_CHILDREN)
        return snapshot, children

    return SSEResponse(
        stream_job_events(
            redis,
            job_id,
            load,
            last_event_id=last_event_id,
            heartbeat_s=float(state.settings.sse_heartbeat_seconds),
            recheck_s=float(state.settings.sse_recheck_seconds),
        )
    )
