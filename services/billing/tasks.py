"""Background job functions of the billing service."""

from __future__ import annotations

import logging
from typing import Any

from libs.db import session_scope
from libs.queue import JobContext, job
from libs.usage import RECORD_USAGE, UsageEvent
from services.billing.repository import UsageRepository

log = logging.getLogger("aistack.billing.tasks")

# PostgreSQL down or hung: tried again after 5, 10, 20, 40, then every 60 s, about 8 minutes
# in all, before the job fails (shown failed, with its event, by the jobs service)
RECORD_TRIES = 12


@job(name=RECORD_USAGE, max_tries=RECORD_TRIES, retry_outages=True)
async def record_usage(ctx: JobContext, event: dict[str, Any]) -> dict[str, bool]:
    """Add one usage event to the ledger; a duplicate (same request_id and kind) is a no-op,
    so it is safe to run again after an outage (also one whose COMMIT went through)."""
    usage = UsageEvent.model_validate(event)
    async with session_scope(ctx.state["db"]) as session:
        recorded = await UsageRepository(session).record(usage)
    if not recorded:
        log.info("usage event %s (%s) already recorded", usage.request_id, usage.kind)
    return {"recorded": recorded}


functions = [record_usage]
