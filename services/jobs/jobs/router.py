"""HTTP routes of the jobs service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from libs.queue import TERMINAL_STATUSES
from libs.redis import RedisDep
from libs.sse import SSEResponse, event_frame
from services.jobs.jobs.repository import JobRepository
from services.jobs.jobs.schemas import JobList, JobOut, JobStatusName, PurgeRequest
from services.jobs.jobs.service import JobService
from services.jobs.state import JobsState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

READ = [require_scope(Scope.JOBS_READ)]
WRITE = [require_scope(Scope.JOBS_WRITE)]
ADMIN = [require_scope(Scope.ADMIN)]


async def get_job_service(
    session: SessionDep, redis: RedisDep, principal: PrincipalDep
) -> JobService:
    return JobService(session, principal, redis)


JobServiceDep = Annotated[JobService, Depends(get_job_service)]


@router.get("", response_model=JobList, summary="List the organization's jobs", dependencies=READ)
async def list_jobs(
    service: JobServiceDep,
    status: Annotated[JobStatusName | None, Query()] = None,
    service_name: Annotated[str | None, Query(alias="service", max_length=64)] = None,
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
    )
    return {"data": rows, "has_more": has_more}


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
    return await service.get(job_id)


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
    summary="Run a failed or cancelled job again as a new job (linked by retry_of)",
    dependencies=WRITE,
)
async def retry_job(job_id: str, service: JobServiceDep) -> object:
    return await service.retry(job_id)


@router.get(
    "/{job_id}/events",
    summary="Progress as Server-Sent Events (`progress` events, then `end`)",
    response_class=SSEResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    dependencies=READ,
)
async def job_events(job_id: str, request: Request, service: JobServiceDep) -> SSEResponse:
    job = await service.get(job_id)
    org_id = job.org_id
    state = JobsState.of(request)
    factory = state.db
    interval = float(state.settings.sse_poll_seconds)
    heartbeat = float(state.settings.sse_heartbeat_seconds)

    async def stream() -> AsyncIterator[bytes]:
        last: tuple[object, ...] | None = None
        quiet_since = time.monotonic()
        while True:
            async with factory() as s:
                row = await JobRepository(s).get_for_org(org_id, job_id) if org_id else None
                if row is None:
                    yield event_frame("end", {"id": job_id, "status": "deleted"})
                    return
                snapshot = JobOut.model_validate(row).model_dump(mode="json")
            key = (snapshot["status"], snapshot["progress"], snapshot["message"])
            if key != last:
                last = key
                quiet_since = time.monotonic()
                yield event_frame("progress", snapshot)
            elif time.monotonic() - quiet_since >= heartbeat:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            if snapshot["status"] in TERMINAL_STATUSES:
                yield event_frame("end", {"id": job_id, "status": snapshot["status"]})
                return
            # a client that leaves cancels this loop (SSEResponse listens for it)
            await asyncio.sleep(interval)

    return SSEResponse(stream())
