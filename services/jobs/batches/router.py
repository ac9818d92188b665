"""``/v1/batches``: OpenAI's Batch API (create, retrieve, list, cancel)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from libs.redis import RedisDep
from services.jobs.batches.schemas import BatchCreate, BatchList, BatchObject
from services.jobs.batches.service import BatchService, render
from services.jobs.state import JobsState

router = APIRouter(prefix="/v1/batches", tags=["batches"])

READ = [require_scope(Scope.JOBS_READ)]
WRITE = [require_scope(Scope.JOBS_WRITE)]


async def get_batch_service(
    request: Request, session: SessionDep, redis: RedisDep, principal: PrincipalDep
) -> BatchService:
    state = JobsState.of(request)
    return BatchService(session, principal, redis, state.http, state.settings, state.plans)


BatchServiceDep = Annotated[BatchService, Depends(get_batch_service)]


@router.post(
    "",
    response_model=BatchObject,
    summary="Create a batch",
    description="OpenAI's createBatch: the requests of a `batch`-purpose JSONL file (Files "
    "API), run through the llm as the caller (its rate limits apply; usage is metered as "
    "batch usage) within 24 h. The batch starts `validating`; follow it with retrieve or the "
    "progress stream of its job (`GET /v1/jobs/batch:{batch_id}/events`).",
    dependencies=WRITE,
)
async def create_batch(body: BatchCreate, service: BatchServiceDep) -> object:
    return render(await service.create(body))


@router.get("", response_model=BatchList, summary="List batches", dependencies=READ)
async def list_batches(
    service: BatchServiceDep,
    after: Annotated[
        str | None, Query(max_length=200, description="A batch id: the page after it")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> object:
    return await service.page(after, limit)


@router.get(
    "/{batch_id}", response_model=BatchObject, summary="Retrieve a batch", dependencies=READ
)
async def retrieve_batch(batch_id: str, service: BatchServiceDep) -> object:
    return render(await service.get(batch_id))


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchObject,
    summary="Cancel a batch",
    description="The batch turns `cancelling`: requests in flight stop within seconds, the "
    "output and error files keep what completed, and it ends `cancelled`.",
    dependencies=WRITE,
)
async def cancel_batch(batch_id: str, service: BatchServiceDep) -> object:
    return render(await service.cancel(batch_id))
