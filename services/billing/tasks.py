"""Background work of the billing service (``python -m libs.worker billing``): the ledger's
consumer of the usage stream (services/billing/usage/consumer.py) and its partitions kept
ahead and past retention. ``record_usage`` still records the queue jobs a producer from
before the stream left."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from libs.db import session_scope
from libs.prices import PriceCatalogue, load_catalogue
from libs.queue import JobContext, job
from libs.storage_errors import describe
from libs.usage import RECORD_USAGE, UsageEvent
from services.billing.plans.catalogue import load_plans
from services.billing.plans.service import publish_default
from services.billing.settings import BillingSettings
from services.billing.usage.consumer import UsageConsumer
from services.billing.usage.partitions import Partitions
from services.billing.usage.repository import UsageRepository

log = logging.getLogger("aistack.billing.tasks")

# PostgreSQL down or hung: tried again after 5, 10, 20, 40, then every 60 s, about 8 minutes
# in all, before the job fails (shown failed, with its event, by the jobs service)
RECORD_TRIES = 12
MAINTAIN_INTERVAL_S = 6 * 3600.0


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


functions = [record_usage]


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
    )
    ctx["ledger_task"] = asyncio.create_task(consumer.run_forever())
    try:
        await publish_default(ctx["redis"], load_plans(settings.plans_config))
    except (RedisError, OSError) as exc:
        log.warning("default entitlements not published (%s)", exc)
    ctx["partitions_task"] = asyncio.create_task(maintain_partitions_forever(ctx["db"], settings))


async def on_shutdown(ctx: dict[str, Any]) -> None:
    for name in ("ledger_task", "partitions_task"):
        task: asyncio.Task[None] | None = ctx.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
