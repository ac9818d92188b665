"""Background job functions of the billing service."""

from __future__ import annotations

import logging
from typing import Any

from libs.db import session_scope
from libs.queue import JobContext, job
from libs.usage import RECORD_USAGE, UsageEvent
from services.billing.repository import UsageRepository

log = logging.getLogger("aistack.billing.tasks")


@job(name=RECORD_USAGE)
async def record_usage(ctx: JobContext, event: dict[str, Any]) -> dict[str, bool]:
    """Add one usage event to the ledger; a duplicate (same request_id and kind) is a no-op."""
    usage = UsageEvent.model_validate(event)
    async with session_scope(ctx.state["session_factory"]) as session:
        recorded = await UsageRepository(session).record(usage)
    if not recorded:
        log.info("usage event %s (%s) already recorded", usage.request_id, usage.kind)
    return {"recorded": recorded}


functions = [record_usage]
