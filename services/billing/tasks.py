"""Background work of the billing service (``python -m libs.worker billing``): the ledger's
consumer of the usage stream (services/billing/usage/consumer.py) and its partitions kept
ahead and past retention. ``record_usage`` still records the queue jobs a producer from
before the stream left."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select

from libs.db import session_scope
from libs.entitlements import publish
from libs.prices import PriceCatalogue, load_catalogue
from libs.queue import JobContext, job
from libs.queue.types import Periodic, RetryPolicy
from libs.storage_errors import describe
from libs.usage import RECORD_USAGE, UsageEvent
from services.billing.models import Subscription
from services.billing.overage.service import OverageReporter, last_finished_month, parse_month
from services.billing.plans.catalogue import load_plans
from services.billing.plans.service import entitlements_of, publish_default
from services.billing.settings import BillingSettings
from services.billing.stripe_api import optional_client
from services.billing.stripe_webhooks.service import PROCESS_STRIPE_EVENT, StripeState
from services.billing.usage.consumer import UsageConsumer
from services.billing.usage.partitions import Partitions
from services.billing.usage.repository import UsageRepository

log = logging.getLogger("aistack.billing.tasks")

# PostgreSQL down or hung: tried again after 5, 10, 20, 40, then every 60 s, about 8 minutes
# in all, before the job fails (shown failed, with its event, by the jobs service)
RECORD_TRIES = 12
MAINTAIN_INTERVAL_S = 6 * 3600.0
REPORT_OVERAGE = "report_overage"


def _prices(ctx: dict[str, Any]) -> PriceCatalogue:
    prices = ctx.get("prices")
    if prices is None:
        settings = ctx.get("settings")
        path = settings.prices_config if isinstance(settings, BillingSettings) else None
        prices = ctx["prices"] = load_catalogue(path)
    return prices


@job(name=RECORD_USAGE, max_tries=RECORD_TRIES, retry_outages=True)
async def record_usage(ctx: JobContext, event: dict[str, Any]) -> dict[str, bool]:
    """Add one usage event queued by a producer from before the usage stream; a duplicate is
    a no-op, so it is safe to run again after an outage."""
    usage = UsageEvent.model_validate(event)
    async with session_scope(ctx.state["db"]) as session:
        recorded = await UsageRepository(session).record(usage, _prices(ctx.state))
    if not recorded:
        log.info("usage event %s (%s) already recorded", usage.request_id, usage.kind)
    return {"recorded": recorded}


# Stripe unreachable (an event re-reads the object's current state): tried again, ~20 minutes
STRIPE_RETRY = RetryPolicy(max_tries=RECORD_TRIES, backoff_s=5.0, max_backoff_s=300.0)


@job(name=PROCESS_STRIPE_EVENT, max_tries=RECORD_TRIES, retry_outages=True, retry=STRIPE_RETRY)
async def process_stripe_event(ctx: JobContext, event_id: str) -> str:
    """Apply one stored Stripe event to its subscription (once; an older one than the state
    applied changes nothing) and publish the entitlements that follow."""
    settings = ctx.state.get("settings")
    plans_path = settings.plans_config if isinstance(settings, BillingSettings) else None
    grace_days = settings.past_due_grace_days if isinstance(settings, BillingSettings) else 7
    client = optional_client(settings) if isinstance(settings, BillingSettings) else None
    async with session_scope(ctx.state["db"]) as session:
        state = StripeState(
            session, ctx.state["redis"], load_plans(plans_path), timedelta(days=grace_days), client
        )
        outcome = await state.process(event_id)
    log.info("Stripe event %s: %s", event_id, outcome)
    return outcome


@job(name=REPORT_OVERAGE, retry_outages=True, retry=STRIPE_RETRY, max_tries=RECORD_TRIES)
async def report_overage(ctx: JobContext, month: str | None = None) -> dict[str, int]:
    """Report a finished month's overage (default: the last one) to Stripe, once per
    organization and month: safe to run again, it sends nothing twice."""
    settings = ctx.state.get("settings")
    if not isinstance(settings, BillingSettings):
        settings = BillingSettings()
    client = optional_client(settings)
    if client is None:
        return {"sent": 0, "already": 0, "none": 0}
    period = parse_month(month) if month else last_finished_month(datetime.now(UTC))
    reporter = OverageReporter(ctx.state["db"], load_plans(settings.plans_config), client)
    counts = await reporter.report(period)
    log.info("overage of %s: %s", f"{period:%Y-%m}", counts)
    return counts


functions = [record_usage, process_stripe_event, report_overage]
# daily: the month just ended is reported on its first day (a day missed runs once)
schedules = [
    Periodic(
        name="overage_report",
        cron="17 1 * * *",
        function=REPORT_OVERAGE,
        missed="run_once",
        description="Report the last month's overage to Stripe (once per organization)",
    )
]


async def freeze_overdue_forever(
    sessions: Any, redis: Any, settings: BillingSettings, interval_s: float = 600.0
) -> None:
    """Publish again the entitlements of past_due subscriptions, so an organization whose
    grace period ended is frozen within ``interval_s`` without another webhook."""
    plans = load_plans(settings.plans_config)
    grace = timedelta(days=settings.past_due_grace_days)
    while True:
        try:
            async with session_scope(sessions) as session:
                rows = await session.scalars(
                    select(Subscription).where(Subscription.past_due_since.is_not(None))
                )
                for sub in rows:
                    await publish(redis, sub.org_id, entitlements_of(sub, plans, grace))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("overdue subscriptions not checked (%s); again later", describe(exc))
        await asyncio.sleep(interval_s)


async def maintain_partitions_forever(
    sessions: Any, settings: BillingSettings, interval_s: float = MAINTAIN_INTERVAL_S
) -> None:
    """Create the coming months' ledger partitions and drop those past retention, at start
    and every ``interval_s``."""
    partitions = Partitions()
    while True:
        try:
            async with session_scope(sessions) as session:
                await partitions.maintain(
                    session,
                    ahead=settings.ledger_partitions_ahead,
                    retention_months=settings.ledger_retention_months,
                    now=datetime.now(UTC),
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            partitions.forget()
            log.warning("ledger partitions not maintained (%s); again later", describe(exc))
        await asyncio.sleep(interval_s)


async def on_startup(ctx: dict[str, Any]) -> None:
    settings = ctx["settings"]
    assert isinstance(settings, BillingSettings)
    consumer = UsageConsumer(
        ctx["redis"],
        ctx["db"],
        _prices(ctx),
        batch=settings.ledger_batch,
        claim_idle_ms=int(settings.ledger_claim_idle_s * 1000),
        thresholds=settings.budget_thresholds,
    )
    ctx["ledger_task"] = asyncio.create_task(consumer.run_forever())
    try:
        await publish_default(ctx["redis"], load_plans(settings.plans_config))
    except (RedisError, OSError) as exc:
        log.warning("default entitlements not published (%s)", exc)
    ctx["partitions_task"] = asyncio.create_task(maintain_partitions_forever(ctx["db"], settings))
    ctx["overdue_task"] = asyncio.create_task(
        freeze_overdue_forever(ctx["db"], ctx["redis"], settings)
    )


async def on_shutdown(ctx: dict[str, Any]) -> None:
    for name in ("ledger_task", "partitions_task", "overdue_task"):
        task: asyncio.Task[None] | None = ctx.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
