"""The job control plane: list, get, cancel and retry the organization's jobs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.errors import Conflict, Forbidden, NotFound
from libs.identity import Principal
from libs.queue import TERMINAL_STATUSES, JobEvent, cancel_job, emit_event
from libs.queue.names import Priority
from services.jobs.jobs.repository import JobRepository
from services.jobs.jobs.submit import submit
from services.jobs.models import Job, JobType
from services.jobs.types.service import validate_arguments

log = logging.getLogger("aistack.jobs")

PURGE_FUNCTION = "purge_finished_jobs"
RETRYABLE = frozenset({"failed", "cancelled", "dead"})


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
        retried: bool | None = None,
        parent_id: str | None = None,
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
            retried=retried,
            parent_id=parent_id,
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

    async def start(
        self,
        row: JobType,
        arguments: dict[str, Any],
        priority: Priority | None = None,
    ) -> Job:
        """Start a job of a user-startable type (checked by the caller) as this principal."""
        validate_arguments(row, arguments)
        job_id = await submit(
            self.session,
            self.redis,
            service=row.service,
            function=row.name,
            kwargs=arguments,
            org_id=self.org_id,
            user_id=self.principal.user_id,
            priority=priority,
        )
        return await self.get(job_id)

    async def retry(self, job_id: str) -> Job:
        """Run a failed, cancelled or dead job again as a new job (``retry_of`` links them)."""
        job = await self.get(job_id)
        self._not_internal(job, "retried")
        if job.status not in RETRYABLE:
            raise Conflict(
                f"Only failed, dead or cancelled jobs can be retried (this one is {job.status})",
                code="job_not_retryable",
            )
        if job.retried_as is not None:
            raise Conflict(
                f"Job already retried as {job.retried_as}",
                code="job_already_retried",
                details={"retried_as": job.retried_as},
            )
        if job.args is None:
            raise Conflict("The job's arguments are unknown", code="job_args_unknown")
        new_id = await self._resubmit(job)
        return await self.get(new_id)

    async def _resubmit(self, job: Job) -> str:
        new_id = await submit(
            self.session,
            self.redis,
            service=job.service,
            function=job.function,
            args=list(job.args or []),
            kwargs=dict(job.kwargs or {}),
            org_id=self.org_id,
            user_id=self.principal.user_id or job.user_id,
            retry_of=job.id,
            priority=job.priority,  # type: ignore[arg-type]
            parent_id=job.parent_id,
        )
        job.retried_as = new_id
        return new_id

    async def retry_many(
        self,
        *,
        status: str,
        ids: list[str] | None,
        service: str | None,
        function: str | None,
        limit: int,
    ) -> list[str]:
        """Retry the organization's dead (or failed) jobs not retried yet, oldest first: by
        id, or every one matching ``service`` / ``function``, up to ``limit``. Running it
        twice retries nothing twice."""
        rows = await self.repo.retryable(
            self.org_id, status=status, ids=ids, service=service, function=function, limit=limit
        )
        return [await self._resubmit(row) for row in rows if row.args is not None]

    async def purge(self, older_than_days: int) -> Job:
        job_id = await submit(
            self.session,
            self.redis,
            service="jobs",
            function=PURGE_FUNCTION,
            kwargs={"org_id": str(self.org_id), "older_than_days": older_than_days},
            org_id=self.org_id,
            user_id=self.principal.user_id,
        )
        return await self.get(job_id)

    async def children(self, job: Job) -> dict[str, Any] | None:
        """A parent job's children by status, and their mean progress (None: no children)."""
        return await self.repo.children_summary(job.id)
