"""The job control plane: list, get, cancel and retry the organization's jobs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.context import get_request_id
from libs.errors import Conflict, Forbidden, NotFound
from libs.identity import Principal
from libs.queue import (
    TERMINAL_STATUSES,
    JobEvent,
    cancel_job,
    emit_event,
    enqueue_now,
    new_job_id,
    queue_name,
)
from libs.telemetry import current_trace_id
from services.jobs.jobs.repository import JobRepository
from services.jobs.models import Job

log = logging.getLogger("aistack.jobs")

PURGE_FUNCTION = "purge_finished_jobs"


class JobService:
    def __init__(self, session: AsyncSession, principal: Principal, redis: Redis) -> None:
        self.session = session
        self.repo = JobRepository(session)
        self.principal = principal
        self.org_id = principal.require_org()
        self.redis = redis

    @property
    def sees_internal(self) -> bool:
        """Admins may look at internal jobs (read only); to everyone else they do not exist."""
        return self.principal.has_scope("admin")

    async def get(self, job_id: str) -> Job:
        job = await self.repo.get_for_org(self.org_id, job_id)
        if job is None or (job.internal and not self.sees_internal):
            # another organization's job looks exactly like an unknown one
            raise NotFound("Job not found", code="job_not_found")
        return job

    async def page(
        self,
        *,
        status: str | None,
        service: str | None,
        limit: int,
        offset: int,
        include_internal: bool = False,
    ) -> tuple[list[Job], bool]:
        if include_internal and not self.sees_internal:
            raise Forbidden(
                "Listing internal jobs requires the admin scope", code="insufficient_scope"
            )
        rows = await self.repo.page(
            self.org_id,
            status=status,
            service=service,
            limit=limit + 1,
            offset=offset,
            include_internal=include_internal,
        )
        return rows[:limit], len(rows) > limit

    @staticmethod
    def _not_internal(job: Job, action: str) -> None:
        # cancelling a usage record would let an organization skip billing for a call
        if job.internal:
            raise Conflict(
                f"Internal jobs cannot be {action}; the platform runs them to completion",
                code="job_internal",
            )

    async def _refresh(self, job: Job) -> Job:
        await self.session.flush()
        await self.session.refresh(job)
        return job

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        self._not_internal(job, "cancelled")
        if job.status in TERMINAL_STATUSES:
            raise Conflict(f"Job already {job.status}", code="job_finished")
        outcome = await cancel_job(self.redis, job_id=job.id, service=job.service)
        job.cancel_requested_at = datetime.now(UTC)
        if outcome == "dequeued":
            # it will never run, so no worker reports it: record the cancellation ourselves
            event = JobEvent(
                job_id=job.id,
                service=job.service,
                function=job.function,
                status="cancelled",
                attempt=job.attempts,
                message="cancelled before it started",
                org_id=str(job.org_id) if job.org_id else None,
                user_id=str(job.user_id) if job.user_id else None,
                queue=job.queue,
            )
            await self.session.flush()
            await self.repo.apply_event(event)
            await emit_event(self.redis, event)
        return await self._refresh(job)

    async def _submit(
        self,
        *,
        service: str,
        function: str,
        args: list[Any],
        kwargs: dict[str, Any],
        retry_of: str | None = None,
    ) -> Job:
        job_id = new_job_id()
        # queued first, recorded second: with Redis down the request fails (503) with nothing
        # written, where a row committed before an enqueue that then failed stayed "queued"
        # forever. The worker only needs the job's arguments, not this row, and its events
        # merge with the row below in whatever order they land.
        await enqueue_now(
            self.redis,
            service=service,
            function=function,
            args=args,
            kwargs=kwargs,
            job_id=job_id,
            org_id=self.org_id,
            user_id=self.principal.user_id,
            retry_of=retry_of,
        )
        # the row exists at once (GET works before the consumer sees the queued event)
        await self.repo.apply_event(
            JobEvent(
                job_id=job_id,
                service=service,
                function=function,
                status="queued",
                progress=0,
                org_id=str(self.org_id),
                user_id=str(self.principal.user_id) if self.principal.user_id else None,
                queue=queue_name(service),
                args=args,
                kwargs=kwargs,
                retry_of=retry_of,
                request_id=get_request_id(),
                trace_id=current_trace_id(),
            )
        )
        return await self.get(job_id)

    async def retry(self, job_id: str) -> Job:
        job = await self.get(job_id)
        self._not_internal(job, "retried")
        if job.status not in ("failed", "cancelled"):
            raise Conflict(
                f"Only failed or cancelled jobs can be retried (this one is {job.status})",
                code="job_not_retryable",
            )
        if job.args is None:
            raise Conflict("The job's arguments are unknown", code="job_args_unknown")
        return await self._submit(
            service=job.service,
            function=job.function,
            args=list(job.args),
            kwargs=dict(job.kwargs or {}),
            retry_of=job.id,
        )

    async def purge(self, older_than_days: int) -> Job:
        return await self._submit(
            service="jobs",
            function=PURGE_FUNCTION,
            args=[],
            kwargs={"org_id": str(self.org_id), "older_than_days": older_than_days},
        )
