"""Jobs the jobs service starts itself (a user's ``POST /v1/jobs``, a retry, a schedule's
tick, a batch): recorded first, enqueued once that record commits.

The record in ``jobs.jobs`` is the source of truth: written in the caller's transaction,
before anything reaches Redis, so a job never exists only in Redis. The enqueue runs after the
commit; if Redis is unreachable then, the request still succeeds (the job is accepted) and the
reconciler (:mod:`services.jobs.jobs.reconciler`) enqueues the row once Redis answers, as it
enqueues again every job Redis lost.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import after_commit
from libs.queue.enqueue import PreparedJob, enqueue_prepared, prepare_job, queued_event
from libs.queue.names import Priority
from services.jobs.jobs.repository import JobRepository
from services.jobs.models import Job

log = logging.getLogger("aistack.jobs")


def enqueue_after_commit(session: AsyncSession, redis: Redis, jobs: Sequence[PreparedJob]) -> None:
    """Enqueue ``jobs`` once ``session`` commits; Redis unreachable then is logged, not raised
    (the reconciler enqueues them later from their records)."""
    todo = list(jobs)

    async def hook() -> None:
        try:
            await enqueue_prepared(redis, todo)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "%d recorded jobs not enqueued yet (Redis: %s); the reconciler enqueues them",
                len(todo),
                exc,
            )

    after_commit(session, hook)


async def submit(
    session: AsyncSession,
    redis: Redis,
    *,
    service: str,
    function: str,
    kwargs: Mapping[str, Any] | None = None,
    args: Sequence[Any] = (),
    org_id: uuid.UUID | str | None,
    user_id: uuid.UUID | str | None = None,
    job_id: str | None = None,
    retry_of: str | None = None,
    priority: Priority | None = None,
    parent_id: str | None = None,
    schedule_id: uuid.UUID | None = None,
    internal: bool = False,
) -> str:
    """Record a queued job in this transaction and enqueue it after the commit; its id."""
    job = prepare_job(
        service=service,
        function=function,
        args=args,
        kwargs=kwargs,
        job_id=job_id,
        org_id=org_id,
        user_id=user_id,
        retry_of=retry_of,
        internal=internal,
        priority=priority,
        parent_id=parent_id,
    )
    await JobRepository(session).record_queued(queued_event(job), schedule_id=schedule_id)
    enqueue_after_commit(session, redis, [job])
    return job.job_id


def prepared_from_record(row: Job, *, attempt: int) -> PreparedJob:
    """The job a record describes, to enqueue again (same id, request id and trace)."""
    defer_s = 0.0
    if row.run_at is not None:
        defer_s = max(0.0, (row.run_at - datetime.now(UTC)).total_seconds())
    return prepare_job(
        service=row.service,
        function=row.function,
        args=list(row.args or []),
        kwargs=dict(row.kwargs or {}),
        job_id=row.id,
        org_id=row.org_id,
        user_id=row.user_id,
        retry_of=row.retry_of,
        internal=row.internal,
        priority=row.priority,  # type: ignore[arg-type]
        parent_id=row.parent_id,
        defer_by=defer_s or None,
        attempt=attempt,
        trace_carrier={"traceparent": row.traceparent} if row.traceparent else None,
        request_id=row.request_id,
    )
