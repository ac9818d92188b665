"""Domain logic of the jobs service: the job-events consumer and the job control plane."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.context import get_request_id
from libs.db import session_scope
from libs.errors import Conflict, Forbidden, NotFound
from libs.identity import Principal
from libs.queue import (
    EVENTS_STREAM,
    TERMINAL_STATUSES,
    JobEvent,
    cancel_job,
    emit_event,
    enqueue_now,
    new_job_id,
    queue_name,
)
from libs.telemetry import current_trace_id
from services.jobs.models import Job
from services.jobs.repository import JobRepository

log = logging.getLogger("aistack.jobs")

CONSUMER_GROUP = "jobs-recorder"
PURGE_FUNCTION = "purge_finished_jobs"


class EventConsumer:
    """Folds ``aistack:job-events`` into ``jobs.jobs`` through a Redis consumer group.

    The group starts at the beginning of the stream, so events sent while the jobs service
    was down (or before it ever ran) are applied when it comes back; an event is acknowledged
    only after its transaction committed, and a dead consumer's pending events are claimed
    after ``claim_idle_ms``. Applying an event twice or out of order is harmless.
    """

    def __init__(
        self,
        redis: Redis,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        consumer: str | None = None,
        batch: int = 100,
        block_ms: int = 5000,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.redis = redis
        self.session_factory = session_factory
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._group_ready = False

    async def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(EVENTS_STREAM, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read(self, stream_id: str, block: int | None) -> list[tuple[Any, Any]]:
        resp = await self.redis.xreadgroup(
            CONSUMER_GROUP, self.consumer, {EVENTS_STREAM: stream_id}, count=self.batch, block=block
        )
        return [entry for _, entries in resp or [] for entry in entries if entry[1]]

    async def run_once(self, block_ms: int | None = None) -> int:
        """Apply one batch (own pending first, then claimed, then new); return events applied."""
        await self.ensure_group()
        entries = await self._read("0", None)
        if not entries:
            claimed = await self.redis.xautoclaim(
                EVENTS_STREAM,
                CONSUMER_GROUP,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id="0-0",
                count=self.batch,
            )
            entries = [e for e in claimed[1] if e[1]]
        if not entries:
            entries = await self._read(">", block_ms)
        applied = 0
        for entry_id, fields in entries:
            try:
                event = JobEvent.from_fields(fields)
            except ValueError:
                log.warning("dropping malformed job event %r", entry_id)
                await self.redis.xack(EVENTS_STREAM, CONSUMER_GROUP, entry_id)
                continue
            # not acknowledged on failure: it stays pending and is retried
            async with session_scope(self.session_factory) as session:
                await JobRepository(session).apply_event(event)
            await self.redis.xack(EVENTS_STREAM, CONSUMER_GROUP, entry_id)
            applied += 1
        return applied

    async def drain(self) -> int:
        """Apply everything available now (tests, one-off catch-up)."""
        total = 0
        while n := await self.run_once(block_ms=None):
            total += n
        return total

    async def run_forever(self) -> None:
        """Loop until cancelled; back off on errors (Redis or Postgres down)."""
        delay = 0.5
        while True:
            try:
                await self.run_once(block_ms=self.block_ms)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job events consumer failed; retrying in %.1fs", delay)
                self._group_ready = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)


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
