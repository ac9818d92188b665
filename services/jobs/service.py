"""Domain logic of the jobs service: the job-events consumer and the job control plane."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import text
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
from libs.storage_errors import outage_of
from libs.telemetry import current_trace_id
from services.jobs.models import Job
from services.jobs.repository import JobRepository

log = logging.getLogger("aistack.jobs")

CONSUMER_GROUP = "jobs-recorder"
PURGE_FUNCTION = "purge_finished_jobs"


class EventConsumer:
    """Folds ``aistack:job-events`` into ``jobs.jobs`` through a Redis consumer group.

    The group starts at the beginning of the stream, so events sent while the jobs service
    was down (or before it ever ran) are applied when it comes back; a dead consumer's
    pending events are claimed after ``claim_idle_ms``. Applying an event twice or out of
    order is harmless.

    Each read batch (up to ``batch`` entries) is applied in one transaction and acknowledged
    with one XACK once it committed. If that transaction fails while PostgreSQL answers, the
    batch is applied again one event per transaction: an event PostgreSQL keeps refusing (a
    "poison" event) is logged and left pending, the others are applied and acknowledged.
    The poison event is tried again every ``poison_retry_ms`` (meanwhile this consumer reads
    past it) until it applies or the stream is trimmed past it (then it is acknowledged).
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
        poison_retry_ms: int = 60_000,
    ) -> None:
        self.redis = redis
        self.session_factory = session_factory
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.poison_retry_ms = poison_retry_ms
        self._group_ready = False
        # pending entries that failed on their own: entry id -> (retry at (monotonic), failures)
        self._parked: dict[Any, tuple[float, int]] = {}

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

    async def _own_pending(self) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
        """This consumer's pending entries: (not parked, parked and due for another try).

        An entry trimmed from the stream comes back with no fields.
        """
        now = time.monotonic()
        cursor = "0"
        fresh: list[tuple[Any, Any]] = []
        retry: list[tuple[Any, Any]] = []
        while True:
            resp = await self.redis.xreadgroup(
                CONSUMER_GROUP, self.consumer, {EVENTS_STREAM: cursor}, count=self.batch
            )
            page = [entry for _, entries in resp or [] for entry in entries]
            if cursor == "0" and len(page) < self.batch:
                # the whole pending list: forget parked entries no longer in it
                ids = {e[0] for e in page}
                self._parked = {k: v for k, v in self._parked.items() if k in ids}
            for entry in page:
                parked = self._parked.get(entry[0])
                if parked is None or not entry[1]:
                    fresh.append(entry)
                elif parked[0] <= now and len(retry) < self.batch:
                    retry.append(entry)
            if fresh or len(page) < self.batch:
                return fresh, retry
            cursor = page[-1][0]

    async def _claim(self) -> list[tuple[Any, Any]]:
        """Entries another (dead) consumer left pending for ``claim_idle_ms``."""
        claimed = await self.redis.xautoclaim(
            EVENTS_STREAM,
            CONSUMER_GROUP,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch,
        )
        # a trimmed entry comes back as (None, None): it is ours now, _own_pending acks it;
        # our own parked entries are retried from _own_pending
        return [e for e in claimed[1] if e[1] and e[0] not in self._parked]

    async def run_once(self, block_ms: int | None = None) -> int:
        """Apply one batch (own pending first, then claimed, then new); return events applied.

        Parked (poison) entries due for another try go along with that batch, applied on
        their own, so they never hold back the entries behind them.
        """
        return (await self._run_batch(block_ms))[1]

    async def _run_batch(self, block_ms: int | None) -> tuple[int, int]:
        """One batch: (entries acknowledged, events applied)."""
        await self.ensure_group()
        entries, retry = await self._own_pending()
        if not entries:
            entries = await self._claim()
        if not entries:
            entries = await self._read(">", None if retry else block_ms)
        done: list[Any] = []  # acknowledged in one XACK at the end
        events: list[tuple[Any, JobEvent]] = []
        for entry_id, fields in entries:
            if not fields:
                log.warning(
                    "job event %r was trimmed from the stream before it was applied", entry_id
                )
                self._parked.pop(entry_id, None)
                done.append(entry_id)
                continue
            try:
                events.append((entry_id, JobEvent.from_fields(fields)))
            except ValueError:
                log.warning("dropping malformed job event %r", entry_id)
                done.append(entry_id)
        retries = [(entry_id, JobEvent.from_fields(fields)) for entry_id, fields in retry]
        applied = 0
        try:
            if events:
                applied = await self._apply(events, done)
            if retries:
                applied += await self._apply_one_by_one(retries, done)
        finally:
            # not acknowledged on failure: an event stays pending and is retried
            if done:
                await self.redis.xack(EVENTS_STREAM, CONSUMER_GROUP, *done)
        return len(done), applied

    async def _apply(self, events: list[tuple[Any, JobEvent]], done: list[Any]) -> int:
        try:
            async with session_scope(self.session_factory) as session:
                await JobRepository(session).apply_events([ev for _, ev in events])
        except Exception as exc:
            if outage_of(exc) is not None:
                raise
            log.warning(
                "a batch of %d job events failed (%s); applying them one at a time",
                len(events),
                _reason(exc),
            )
            return await self._apply_one_by_one(events, done)
        for entry_id, _ in events:
            self._parked.pop(entry_id, None)
            done.append(entry_id)
        return len(events)

    async def _apply_one_by_one(self, events: list[tuple[Any, JobEvent]], done: list[Any]) -> int:
        applied = 0
        for entry_id, ev in events:
            try:
                async with session_scope(self.session_factory) as session:
                    await JobRepository(session).apply_event(ev)
            except Exception as exc:
                if outage_of(exc) is not None or not await self._database_answers():
                    raise  # PostgreSQL is the problem, not the event: retry the lot later
                self._park(entry_id, ev, exc)
                continue
            self._parked.pop(entry_id, None)
            done.append(entry_id)
            applied += 1
        return applied

    def _park(self, entry_id: Any, ev: JobEvent, exc: Exception) -> None:
        failures = self._parked.get(entry_id, (0.0, 0))[1] + 1
        self._parked[entry_id] = (time.monotonic() + self.poison_retry_ms / 1000, failures)
        log.error(
            "job event %r (%s of job %s) cannot be applied (%s); left pending, tried again in %ds"
            " (failure %d)",
            entry_id,
            ev.status,
            ev.job_id,
            _reason(exc),
            self.poison_retry_ms // 1000,
            failures,
            extra={"job_id": ev.job_id, "stream_entry": str(entry_id), "failures": failures},
        )

    async def _database_answers(self) -> bool:
        try:
            async with self.session_factory() as session:
                await session.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def drain(self) -> int:
        """Apply everything available now (tests, one-off catch-up); return events applied.

        Stops at a batch where nothing could be acknowledged (only poison events were left).
        """
        total = 0
        while True:
            acked, applied = await self._run_batch(None)
            total += applied
            if not acked:
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
            except Exception as exc:
                dependency = outage_of(exc)
                if dependency is not None:
                    # an outage, not a bug: one line per try (backing off), no traceback
                    log.warning(
                        "job events consumer: %s unreachable (%s); retrying in %.1fs",
                        "Redis" if dependency == "redis" else "PostgreSQL",
                        _reason(exc),
                        delay,
                    )
                else:
                    log.exception("job events consumer failed; retrying in %.1fs", delay)
                self._group_ready = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)


def _reason(exc: BaseException) -> str:
    """An error's first line, without SQLAlchemy's statement dump."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig or exc).splitlines()[0] if str(orig or exc) else type(exc).__name__
    return text_.rsplit(">: ", 1)[-1][:300]


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
