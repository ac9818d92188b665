"""Background work of the jobs service (``python -m libs.worker jobs``).

Job types (each declared on its ``@job``; see ``GET /v1/jobs/types``):

- ``purge_finished_jobs``: an organization's finished records older than N days (admins'
  ``POST /v1/jobs/maintenance/purge``);
- ``purge_jobs``: the same, started by an admin with ``POST /v1/jobs`` or on a schedule;
- ``sleep``: waits, reporting progress: to try the API (``POST /v1/jobs``, its events) and
  measure the runtime;
- ``purge_expired_jobs``: retention, every hour (a schedule declared in code): records past
  ``JOBS_RETENTION_*_DAYS`` for their status;
- ``run_batch``: one batch of OpenAI's Batch API (:mod:`services.jobs.batches.runner`).

Loops the worker runs beside its jobs:

- the **recorder** folds ``aistack:job-events`` into ``jobs.jobs`` (resuming from its Redis
  consumer group, so nothing is lost while it is down);
- the **reconciler** copies the job types and schedules workers declared into PostgreSQL, then
  checks unfinished records against Redis (:mod:`services.jobs.jobs.reconciler`);
- the **scheduler** fires due schedules, each tick once (:mod:`services.jobs.schedules.scheduler`);
- the **queue monitor** sets the queues' gauges (:mod:`services.jobs.queues.monitor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from libs.db import session_scope
from libs.http import make_http_client
from libs.permissions import Scope
from libs.queue import JobContext, Periodic, RetryPolicy, job
from libs.storage_errors import describe, outage_of
from libs.transport import Origin, Timeouts
from services.jobs.batches.repository import BatchRepository
from services.jobs.batches.runner import BatchRun
from services.jobs.jobs.reconciler import Reconciler
from services.jobs.jobs.recorder import EventConsumer
from services.jobs.jobs.repository import JobRepository
from services.jobs.notifications import tasks as notification_tasks
from services.jobs.notifications.outcomes import JobOutcomes
from services.jobs.queues.monitor import QueueMonitor
from services.jobs.schedules.scheduler import Scheduler, schedule_forever
from services.jobs.schedules.service import sync_code_schedules
from services.jobs.settings import JobsSettings, get_settings
from services.jobs.types.service import sync_job_types

PURGE_BATCH = 500
log = logging.getLogger("aistack.jobs.tasks")


async def _purge(ctx: JobContext, org: uuid.UUID, older_than_days: int) -> int:
    factory = ctx.state["db"]
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
    return deleted


@job(retry_outages=True)
async def purge_finished_jobs(ctx: JobContext, org_id: str, older_than_days: int) -> dict[str, int]:
    """Delete an organization's finished job records older than N days, in batches.

    Idempotent: running it again deletes what is left (nothing, or rows that aged since).
    """
    return {"deleted": await _purge(ctx, uuid.UUID(org_id), older_than_days)}


@job(
    user_startable=True,
    scope=Scope.ADMIN,
    schedulable=True,
    retry_outages=True,
    concurrency=1,
)
async def purge_jobs(ctx: JobContext, older_than_days: int = 30) -> dict[str, int]:
    """Delete the organization's finished job records older than ``older_than_days``."""
    if ctx.org_id is None or not 0 <= older_than_days <= 3650:
        raise ValueError("purge_jobs needs an organization and 0 <= older_than_days <= 3650")
    return {"deleted": await _purge(ctx, uuid.UUID(ctx.org_id), older_than_days)}


@job(user_startable=True, schedulable=True, concurrency=4, timeout=3700)
async def sleep(ctx: JobContext, seconds: float = 1.0, steps: int = 4) -> dict[str, float]:
    """Wait ``seconds`` (at most an hour) in ``steps`` steps, reporting progress after each:
    to try the API and its progress stream."""
    seconds = max(0.0, min(float(seconds), 3600.0))
    steps = max(1, min(int(steps), 1000))
    for i in range(steps):
        await asyncio.sleep(seconds / steps)
        await ctx.progress(100 * (i + 1) / steps, f"step {i + 1} of {steps}")
    return {"slept": seconds}


@job(internal=True, retry_outages=True, max_tries=5, timeout=1800)
async def purge_expired_jobs(ctx: JobContext) -> dict[str, int]:
    """Retention: delete finished job records past their status's JOBS_RETENTION_*_DAYS."""
    settings = ctx.state.get("settings")
    s = settings if isinstance(settings, JobsSettings) else get_settings()
    now = datetime.now(UTC)
    plan: list[tuple[str, str | None, int]] = [
        ("succeeded", "succeeded", s.retention_succeeded_days),
        ("cancelled", "cancelled", s.retention_cancelled_days),
        ("failed", "failed", s.retention_failed_days),
        ("dead", "dead", s.retention_dead_days),
        ("internal", None, s.retention_internal_days),
    ]
    counts: dict[str, int] = {}
    for label, status, days in plan:
        if days <= 0:
            continue
        counts[label] = 0
        while True:
            async with session_scope(ctx.state["db"]) as session:
                n = await JobRepository(session).purge_expired(
                    status, now - timedelta(days=days), 5000, internal=status is None
                )
            counts[label] += n
            if n < 5000:
                break
    log.info("retention: deleted %s", counts)
    return counts


BATCH_HTTP = "jobs_batch_http"
BATCH_LLM = "jobs_batch_llm"
BATCH_RETRY = RetryPolicy(max_tries=10, backoff_s=2.0, max_backoff_s=120.0)


@job(retry=BATCH_RETRY, timeout=26 * 3600, concurrency=4, priority="low")
async def run_batch(ctx: JobContext, batch_id: str) -> dict[str, Any]:
    """Run one batch of OpenAI's Batch API (``POST /v1/batches``): its lines through the llm
    as its owner, its output and error files into rag.

    Safe to run again (a crash, a retry): lines with a result are skipped and lines sent but
    without one are reported, never sent twice. Out of tries, the batch is failed."""
    settings = _settings(ctx.state)
    # the worker's clients (on_startup); a job's ctx is a copy of the worker's, so clients made
    # here are the job's own, closed when it ends (a worker started without on_startup)
    owned = BATCH_LLM not in ctx.state
    http, llm = _batch_clients(settings) if owned else (ctx.state[BATCH_HTTP], ctx.state[BATCH_LLM])
    try:
        return await BatchRun(ctx, ctx.state["db"], http, llm, settings).run(batch_id)
    except Exception as exc:
        if ctx.attempt >= BATCH_RETRY.max_tries:
            async with session_scope(ctx.state["db"]) as session:
                await BatchRepository(session).move(
                    batch_id,
                    ["validating", "in_progress", "finalizing", "cancelling"],
                    "failed",
                    failed_at=datetime.now(UTC),
                    errors=[{"code": "batch_failed", "message": describe(exc)[:500]}],
                )
        raise
    finally:
        if owned:
            await http.aclose()
            await llm.aclose()


def _batch_clients(settings: JobsSettings) -> tuple[httpx.AsyncClient, Origin]:
    """The batch jobs' clients: rag's files over httpx, the lines to the llm over Origin."""
    timeouts = Timeouts(connect=5, read=settings.batch_request_timeout_s, write=30, pool=600)
    return make_http_client("jobs", timeout=60, retries=2), Origin(settings.llm_url, timeouts)


# the worker's job slots (read when the worker is built): the notification fan-out delivers the
# events of the jobs it holds at once together, so more slots make bigger batches under load
worker_options = {"max_jobs": get_settings().worker_max_jobs}

functions = [
    purge_finished_jobs,
    purge_jobs,
    sleep,
    purge_expired_jobs,
    run_batch,
    *notification_tasks.functions,
]
schedules = [
    Periodic(
        name="retention",
        cron="23 * * * *",
        function="purge_expired_jobs",
        description="Delete finished job records past their retention (JOBS_RETENTION_*_DAYS)",
        missed="run_once",
    ),
    *notification_tasks.schedules,
]


def _settings(ctx: dict[str, Any]) -> JobsSettings:
    s = ctx.get("settings")
    return s if isinstance(s, JobsSettings) else get_settings()


async def _every(seconds: float, name: str, work: Callable[[], Awaitable[Any]]) -> None:
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if outage_of(exc) is not None:
                log.warning("%s: %s unavailable (%s)", name, outage_of(exc), describe(exc))
            else:
                log.exception("%s failed; again in %.0f s", name, seconds)
        await asyncio.sleep(seconds)


async def on_startup(ctx: dict[str, Any]) -> None:
    settings = _settings(ctx)
    redis, db = ctx["redis"], ctx["db"]
    notification_tasks.on_startup(ctx, settings)
    ctx[BATCH_HTTP], ctx[BATCH_LLM] = _batch_clients(settings)
    consumer = EventConsumer(
        redis,
        db,
        block_ms=settings.consumer_block_ms,
        claim_idle_ms=settings.consumer_claim_idle_ms,
    )
    reconciler = Reconciler(redis, db, grace_s=settings.reconcile_grace_s)

    async def maintain() -> None:
        async with session_scope(db) as session:
            await sync_job_types(redis, session)
            await sync_code_schedules(redis, session)
        await reconciler.run_once()

    scheduler = Scheduler(redis, db, grace_s=settings.schedule_grace_s)
    monitor = QueueMonitor(redis, db)
    ctx["jobs_loops"] = [
        asyncio.create_task(consumer.run_forever()),
        asyncio.create_task(_every(settings.reconcile_interval_s, "reconciler", maintain)),
        asyncio.create_task(schedule_forever(scheduler, settings.schedule_tick_s)),
        asyncio.create_task(_every(monitor.interval_s, "queue monitor", monitor.run_once)),
        # users' jobs that ended notify their owner (libs/notify)
        asyncio.create_task(JobOutcomes(redis, str(ctx.get("worker_id", "jobs"))).run_forever()),
    ]


async def on_shutdown(ctx: dict[str, Any]) -> None:
    for key in (BATCH_HTTP, BATCH_LLM):
        client = ctx.pop(key, None)
        if client is not None:
            await client.aclose()
    for task in ctx.get("jobs_loops", []):
        task.cancel()
    for task in ctx.get("jobs_loops", []):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if ctx.get("http") is not None:
        await ctx["http"].aclose()
