"""Create, read, list and cancel the organization's batches (the routes' side)."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.entitlements import EntitlementsCache, EntitlementsUnavailable
from libs.errors import BadRequest, Conflict, NotFound, RateLimited
from libs.identity import Principal
from libs.permissions import Scope
from libs.queue import enqueue_now
from services.jobs.batches.files import FileNotFound, RagFiles, Tokens
from services.jobs.batches.repository import BatchRepository
from services.jobs.batches.schemas import FINISHED, BatchCreate
from services.jobs.models import Batch
from services.jobs.settings import JobsSettings

log = logging.getLogger("aistack.jobs.batches")
WINDOW = timedelta(hours=24)
RUN_BATCH = "run_batch"


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(16)}"


def _unix(at: datetime | None) -> int | None:
    return int(at.timestamp()) if at is not None else None


def render(b: Batch) -> dict[str, Any]:
    """A batch as OpenAI's batch object."""
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": {"object": "list", "data": b.errors} if b.errors else None,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": _unix(b.created_at),
        "in_progress_at": _unix(b.in_progress_at),
        "expires_at": _unix(b.expires_at),
        "finalizing_at": _unix(b.finalizing_at),
        "completed_at": _unix(b.completed_at),
        "failed_at": _unix(b.failed_at),
        "expired_at": _unix(b.expired_at),
        "cancelling_at": _unix(b.cancelling_at),
        "cancelled_at": _unix(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": b.meta,
        "model": b.model,
    }


def _not_found(batch_id: str) -> NotFound:
    shown = batch_id if len(batch_id) <= 80 else batch_id[:80] + "…"
    return NotFound(f"No batch found with id '{shown}'.", code="batch_not_found")


class BatchService:
    def __init__(
        self,
        session: AsyncSession,
        principal: Principal,
        redis: Redis,
        http: httpx.AsyncClient,
        settings: JobsSettings,
        plans: EntitlementsCache,
    ) -> None:
        self.session, self.principal, self.redis = session, principal, redis
        self.plans = plans
        self.repo = BatchRepository(session)
        self.settings = settings
        self.org_id = principal.require_org()
        self.files = RagFiles(
            http, settings.rag_url, Tokens(principal, settings.internal_token_secret)
        )

    async def _batch_jobs_limit(self) -> int | None:
        """The plan's batch_jobs (None: no limit: the plan sets none, billing publishes no
        plan, or Redis cannot say and none was read before: batches worked without a
        plan until now, and a Redis outage stops their queue anyway)."""
        try:
            ent = await self.plans.get(self.org_id)  # bounded by the cache's timeout
        except EntitlementsUnavailable as exc:
            log.warning("plan of %s unknown (Redis: %s); batch_jobs not applied", self.org_id, exc)
            return None
        return None if ent is None else ent.limits.batch_jobs

    async def _check_active_limit(self) -> None:
        limit = await self._batch_jobs_limit()
        if limit is None:
            return
        await self.repo.lock_org(self.org_id)  # held until commit: the count stays exact
        active = await self.repo.count_active(self.org_id, tuple(FINISHED))
        if active >= limit:
            # OpenAI answers batch creations over its limits with 429 rate_limit_exceeded
            raise RateLimited(
                f"Your organization has reached its limit (batch_jobs) of {limit} batches in "
                f"progress at once ({active} now). Wait for one to finish or cancel one, "
                "or move to a larger plan.",
                code="rate_limit_exceeded",
            )

    async def create(self, body: BatchCreate) -> Batch:
        # the batch's lines run as this caller: it needs what the llm will ask of it
        self.principal.require_scope(Scope.LLM_USE)
        try:
            f = await self.files.get(body.input_file_id)
        except FileNotFound:
            raise NotFound(
                f"No file found with id '{body.input_file_id[:80]}'.",
                code="file_not_found",
                details=[{"field": "input_file_id"}],
            ) from None
        if f.get("purpose") != "batch":
            raise BadRequest(
                f"The input file must have purpose 'batch', not '{f.get('purpose')}'.",
                code="invalid_file_purpose",
                details=[{"field": "input_file_id"}],
            )
        if int(f.get("bytes") or 0) > self.settings.batch_max_file_bytes:
            raise BadRequest(
                f"The input file is larger than {self.settings.batch_max_file_bytes} bytes.",
                code="file_too_large",
                details=[{"field": "input_file_id"}],
            )
        await self._check_active_limit()
        now = datetime.now(UTC)
        batch = Batch(
            id=new_batch_id(),
            org_id=self.org_id,
            user_id=self.principal.user_id,
            principal=self.principal.model_dump(mode="json", exclude_defaults=True),
            endpoint=body.endpoint,
            input_file_id=body.input_file_id,
            completion_window=body.completion_window,
            meta=body.metadata,
            output_expires_after=(
                body.output_expires_after.model_dump() if body.output_expires_after else None
            ),
            status="validating",
            total=0,
            completed=0,
            failed=0,
            claimed_through=-1,
            created_at=now,
            expires_at=now + WINDOW,
        )
        batch.job_id = f"batch:{batch.id}"
        await self.repo.add(batch)
        # queued before the commit, not after it: with Redis down, the create fails (503) and
        # rolls back instead of leaving a batch `validating` that no job will ever run. A run
        # that starts before the commit waits for the batch (BatchRun.run)
        await enqueue_now(
            self.redis,
            service="jobs",
            function=RUN_BATCH,
            kwargs={"batch_id": batch.id},
            job_id=batch.job_id,
            org_id=self.org_id,
            user_id=self.principal.user_id,
            priority="low",
        )
        return batch

    async def get(self, batch_id: str) -> Batch:
        batch = await self.repo.get(batch_id, self.org_id)
        if batch is None:
            raise _not_found(batch_id)
        return batch

    async def page(self, after: str | None, limit: int) -> dict[str, Any]:
        cursor = None
        if after is not None:
            cursor = await self.repo.get(after, self.org_id)
            if cursor is None:
                raise _not_found(after)
        rows = await self.repo.page(self.org_id, cursor, limit)
        data = [render(b) for b in rows[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(rows) > limit,
        }

    async def cancel(self, batch_id: str) -> Batch:
        """Ask the batch to stop: ``cancelling`` now; its run stops its requests, writes what
        completed and sets ``cancelled`` (a batch no run picked up yet is cancelled by the run
        when it starts)."""
        batch = await self.repo.lock(batch_id, self.org_id)
        if batch is None:
            raise _not_found(batch_id)
        if batch.status in ("cancelling", "cancelled"):
            return batch
        if batch.status in FINISHED or batch.status == "finalizing":
            raise Conflict(
                f"Cannot cancel a batch with status '{batch.status}'.",
                code="batch_not_cancellable",
            )
        batch.status = "cancelling"
        batch.cancelling_at = datetime.now(UTC)
        await self.session.flush()
        return batch
