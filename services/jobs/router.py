"""HTTP routes of the jobs service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request

from libs.db import SessionDep
from libs.identity import Principal, require_scope
from libs.queue import TERMINAL_STATUSES
from libs.redis import RedisDep
from libs.sse import SSEResponse, event_frame
from services.jobs.repository import JobRepository
from services.jobs.schemas import JobList, JobOut, JobStatusName, PurgeRequest
from services.jobs.service import JobService

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ReadPrincipal = Annotated[Principal, require_scope("jobs:read")]
WritePrincipal = Annotated[Principal, require_scope("jobs:write")]
AdminPrincipal = Annotated[Principal, require_scope("admin")]


@router.get("", response_model=JobList, summary="List the organization's jobs")
async def list_jobs(
    session: SessionDep,
    redis: RedisDep,
    principal: ReadPrincipal,
    status: Annotated[JobStatusName | None, Query()] = None,
    service: Annotated[str | None, Query(max_length=64)] = None,
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
    rows, has_more = await JobService(session, principal, redis).page(
        status=status,
        service=service,
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
)
async def purge_jobs(
    body: PurgeRequest, session: SessionDep, redis: RedisDep, principal: AdminPrincipal
) -> object:
    return await JobService(session, principal, redis).purge(body.older_than_days)


@router.get("/{job_id}", response_model=JobOut, summary="Get a job")
async def get_job(
    job_id: str, session: SessionDep, redis: RedisDep, principal: ReadPrincipal
) -> object:
    return await JobService(session, principal, redis).get(job_id)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Cancel a queued or running job (409 once it finished)",
)
async def cancel_job(
    job_id: str, session: SessionDep, redis: RedisDep, principal: WritePrincipal
) -> object:
    return await JobService(session, principal, redis).cancel(job_id)


@router.post(
    "/{job_id}/retry",
    status_code=201,
    response_model=JobOut,
    summary="Run a failed or cancelled job again as a new job (linked by retry_of)",
)
async def retry_job(
    job_id: str, session: SessionDep, redis: RedisDep, principal: WritePrincipal
) -> object:
    return await JobService(session, principal, redis).retry(job_id)


@router.get(
    "/{job_id}/events",
    summary="Progress as Server-Sent Events (`progress` events, then `end`)",
    response_class=SSEResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(
    job_id: str, request: Request, session: SessionDep, redis: RedisDep, principal: ReadPrincipal
) -> SSEResponse:
    job = await JobService(session, principal, redis).get(job_id)
    org_id = job.org_id
    factory = request.app.state.session_factory
    interval = float(request.app.state.settings.sse_poll_seconds)
    heartbeat = float(request.app.state.settings.sse_heartbeat_seconds)

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
