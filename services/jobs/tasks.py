"""Background job functions of the jobs service, and its job-events consumer.

The worker (``python -m libs.worker jobs``) also runs the consumer that folds
``aistack:job-events`` into ``jobs.jobs``; it resumes from its Redis consumer group, so
nothing is lost while it is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.db import session_scope
from libs.queue import JobContext, job
from services.jobs.jobs.recorder import EventConsumer
from services.jobs.jobs.repository import JobRepository
from services.jobs.settings import JobsSettings

PURGE_BATCH = 500
log = logging.getLogger("aistack.jobs.tasks")


@job(retry_outages=True)
async def purge_finished_jobs(ctx: JobContext, org_id: str, older_than_days: int) -> dict[str, int]:
    """Delete an organization's finished job records older than N days, in batches.

    Idempotent: running it again deletes what is left (nothing, or rows that aged since).
    """
    factory = ctx.state["db"]
    org = uuid.UUID(org_id)
    before = datetime.now(UTC) - timedelta(days=older_than_days)
    async with session_scope(factory) as session:
        total = await JobRepository(session).count_purgeable(org, before)
    await ctx.progress(0, f"{total} finished jobs to delete")
    deleted = 0
    while True:
        async with session_scope(factory) as session:
            n = await JobRepository(session).purge_batch(org, before, PURGE_BATCH)
        deleted += n
        pct = 100 * deleted / total if total else 100
        await ctx.progress(min(pct, 100), f"deleted {deleted} of {total}")
        if n < PURGE_BATCH:
            break
    log.info("purged %d finished jobs older than %d days", deleted, older_than_days)
    return {"deleted": deleted}


functions = [purge_finished_jobs]


async def on_startup(ctx: dict[str, Any]) -> None:
    settings = ctx.get("settings")
    consumer = EventConsumer(
        ctx["redis"],
        ctx["db"],
        block_ms=settings.consumer_block_ms if isinstance(settings, JobsSettings) else 5000,
        claim_idle_ms=(
            settings.consumer_claim_idle_ms if isinstance(settings, JobsSettings) else 60_000
        ),
    )
    ctx["event_consumer_task"] = asyncio.create_task(consumer.run_forever())


async def on_shutdown(ctx: dict[str, Any]) -> None:
    task: asyncio.Task[None] | None = ctx.get("event_consumer_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
