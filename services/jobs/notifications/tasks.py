"""The notification center's jobs (run by the jobs service's worker)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx

from libs.notify import FUNCTION, Event
from libs.queue import JobContext, Periodic, RetryPolicy, job
from services.jobs.email.service import SEND_MAIL, send_digests, send_one
from services.jobs.notifications.fanout import Fanout, FanoutBatcher, Recipients
from services.jobs.settings import JobsSettings, get_settings
from services.jobs.webhooks.service import DELIVER, deliver_message


def _settings(ctx: JobContext) -> JobsSettings:
    s = ctx.state.get("settings")
    return s if isinstance(s, JobsSettings) else get_settings()


def on_startup(ctx: dict[str, Any], settings: JobsSettings) -> None:
    """What the worker's notification jobs share (each job's ``ctx`` is a copy of the worker's:
    what a job sets in it is gone with the job): one HTTP client, one fan-out batcher."""
    http = ctx["http"] = httpx.AsyncClient()
    recipients = Recipients(http, settings.auth_url, settings.internal_token_secret)
    fanout = Fanout(ctx["db"], ctx["redis"], recipients)
    ctx["fanout_batcher"] = FanoutBatcher(fanout, settings.notification_batch)


def _http(ctx: JobContext) -> httpx.AsyncClient:
    client = ctx.state.get("http")
    if not isinstance(client, httpx.AsyncClient):  # a worker started without on_startup
        client = ctx.state["http"] = httpx.AsyncClient()
    return client


def fanout_of(ctx: JobContext) -> Fanout:
    settings = _settings(ctx)
    recipients = Recipients(_http(ctx), settings.auth_url, settings.internal_token_secret)
    return Fanout(ctx.state["db"], ctx.state["redis"], recipients)


def batcher_of(ctx: JobContext) -> FanoutBatcher:
    """The worker's one batcher: its concurrent fan-out jobs deliver their events together."""
    batcher = ctx.state.get("fanout_batcher")
    if not isinstance(batcher, FanoutBatcher):  # a worker started without on_startup
        batcher = FanoutBatcher(fanout_of(ctx), _settings(ctx).notification_batch)
    return batcher


@job(
    name=FUNCTION,
    internal=True,
    retry_outages=True,
    retry=RetryPolicy(max_tries=8, backoff_s=2.0, max_backoff_s=300.0),
    # its record is the event's row in jobs.notification_events; jobs.jobs keeps failures
    record="failures",
)
async def deliver_notification(ctx: JobContext, event: dict[str, Any]) -> dict[str, int]:
    """Turn one notification event (libs/notify) into its recipients' notifications (with the
    other events the worker is delivering at the same time); a second delivery of the same
    event does nothing."""
    return {"notified": await batcher_of(ctx).deliver(Event.model_validate(event))}


@job(
    name=DELIVER,
    retry_outages=True,
    max_tries=5,
    timeout=120,
    concurrency=4,
    # the attempt log is its record: jobs.jobs keeps only deliveries that failed as jobs
    record="failures",
)
async def deliver_webhook(ctx: JobContext, message_id: str) -> dict[str, str]:
    """POST one webhook message to its endpoint (one try; the next is scheduled on failure).
    At most 4 of one organization's at once: a slow endpoint holds its own slots only."""
    settings = _settings(ctx)
    status = await deliver_message(
        ctx.state["db"],
        ctx.state["redis"],
        _http(ctx),
        uuid.UUID(message_id),
        timeout_s=settings.webhook_timeout_s,
        allow_private=settings.private_webhooks,
        disable_after=timedelta(days=settings.webhook_disable_after_days),
    )
    return {"status": status}


@job(
    name=SEND_MAIL,
    internal=True,
    retry_outages=True,
    retry=RetryPolicy(max_tries=6, backoff_s=30.0, max_backoff_s=1800.0),
    timeout=120,
)
async def send_notification_email(ctx: JobContext, mail_id: str) -> dict[str, str]:
    """Send one notification mail over SMTP (retried while SMTP fails; sent at most once
    once it went)."""
    return {"status": await send_one(ctx.state["db"], _settings(ctx), uuid.UUID(mail_id))}


@job(internal=True, retry_outages=True, max_tries=3, timeout=1800)
async def send_notification_digests(ctx: JobContext, frequency: str = "daily") -> dict[str, int]:
    """Send each user whose digest comes at ``frequency`` (hourly, daily) what is pending."""
    return {"sent": await send_digests(ctx.state["db"], _settings(ctx), frequency)}


functions = [
    deliver_notification,
    deliver_webhook,
    send_notification_email,
    send_notification_digests,
]
schedules = [
    Periodic(
        name="notification-digests-hourly",
        cron="5 * * * *",
        function="send_notification_digests",
        kwargs={"frequency": "hourly"},
        description="Hourly notification digests",
    ),
    Periodic(
        name="notification-digests-daily",
        cron="0 8 * * *",
        function="send_notification_digests",
        kwargs={"frequency": "daily"},
        description="Daily notification digests (08:00 UTC)",
        missed="run_once",
    ),
]
