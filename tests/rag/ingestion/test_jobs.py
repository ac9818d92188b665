"""Ingestion as jobs of the shared queue: lifecycle and progress events for the jobs service,
cancel and retry from there."""

from __future__ import annotations

from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.queue import EVENTS_STREAM, JobEvent, cancel_job, enqueue_now
from libs.testing import principal
from services.rag.state import RagState
from tests.support.stacks.rag import run_worker, sdk_for


async def job_of(engine: AsyncEngine, file_id: str) -> str:
    async with engine.connect() as conn:
        return str(
            (
                await conn.execute(
                    text("SELECT job_id FROM rag.vector_store_files WHERE file_id = :f"),
                    {"f": file_id.removeprefix("file-")},
                )
            ).scalar_one()
        )


async def events(redis: Redis, job_id: str) -> list[JobEvent]:
    return [
        e
        for e in (JobEvent.from_fields(f) for _, f in await redis.xrange(EVENTS_STREAM))
        if e.job_id == job_id
    ]


async def test_ingestion_reports_to_the_jobs_service(
    committed: FastAPI, redis: Redis, engine: AsyncEngine
) -> None:
    who = principal()
    client = sdk_for(committed, who)
    f = await client.files.create(file=("a.txt", b"Some words to ingest."), purpose="assistants")
    await client.vector_stores.create(file_ids=[f.id])
    job_id = await job_of(engine, f.id)
    await run_worker(RagState.of_app(committed).settings)
    seen = await events(redis, job_id)
    statuses = [e.status for e in seen]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "progress" in statuses
    assert {e.org_id for e in seen} == {str(who.org_id)}
    assert seen[0].function == "ingest_file" and seen[0].service == "rag"
    assert any(e.message and "chunks" in e.message for e in seen)


async def test_cancel_and_retry_from_the_jobs_service(
    committed: FastAPI, redis: Redis, engine: AsyncEngine
) -> None:
    client = sdk_for(committed, principal())
    settings = RagState.of_app(committed).settings
    f = await client.files.create(
        file=("a.txt", b"Cancel me, then retry me."), purpose="assistants"
    )
    vs = await client.vector_stores.create(file_ids=[f.id])
    job_id = await job_of(engine, f.id)
    assert await cancel_job(redis, job_id=job_id, service="rag") == "dequeued"
    await run_worker(settings)
    sf = await client.vector_stores.files.retrieve(file_id=f.id, vector_store_id=vs.id)
    assert sf.status == "cancelled"
    # the jobs service's retry: the same function and arguments under a new job id
    queued = next(e for e in await events(redis, job_id) if e.status == "queued")
    await enqueue_now(
        redis, service="rag", function="ingest_file", args=queued.args or [], retry_of=job_id
    )
    await run_worker(settings)
    sf = await client.vector_stores.files.retrieve(file_id=f.id, vector_store_id=vs.id)
    assert sf.status == "completed"
