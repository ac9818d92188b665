"""Soft budget thresholds: an organization whose spend this period crosses 50, 80 or 100 % of
its monthly budget (``BILLING_BUDGET_THRESHOLDS``) has its admins told once per period
(``billing.budget_threshold``, libs/notify).

Checked by the ledger's consumer after each batch it records, for the organizations in it: the
spend is the budget's counter in Redis (libs/budget.py: what the llm reserved and settled, the
figure budgets are enforced on), the budget the organization's published entitlements. The
event id derives from organization, period and threshold, so a check repeated (another
consumer, a replayed batch) is still one notification; a flag per threshold and period keeps
later batches from asking again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from decimal import Decimal

from redis.asyncio import Redis

from libs.budget import UNIT, budget_key
from libs.entitlements import Entitlements, entitlements_key
from libs.notify import BudgetThreshold, Event, emit_now, make_event

log = logging.getLogger("aistack.billing.thresholds")
FLAG_TTL_S = 40 * 24 * 3600  # longer than a period


def flag_key(org_id: uuid.UUID, period: str, percent: int) -> str:
    return f"aistack:billing:budget-told:{{{org_id}}}:{period}:{percent}"


async def tell_thresholds(
    redis: Redis, org_ids: Iterable[uuid.UUID], thresholds: Sequence[int]
) -> list[Event]:
    """Emit the thresholds newly crossed by ``org_ids``; returns the events emitted."""
    orgs = sorted(set(org_ids))
    if not orgs or not thresholds:
        return []
    budgets: list[tuple[uuid.UUID, str, Decimal]] = []
    for org, raw in zip(orgs, await redis.mget([entitlements_key(o) for o in orgs]), strict=True):
        if raw is None:
            continue
        ent = Entitlements.model_validate_json(raw)
        limit = ent.limits.monthly_spend_usd
        if limit and ent.period_start:
            budgets.append((org, ent.period_start, limit))
    if not budgets:
        return []
    counters = await redis.mget([budget_key(o, period) for o, period, _ in budgets])
    candidates: list[tuple[str, Event]] = []
    for (org, period, limit), raw in zip(budgets, counters, strict=True):
        spent = Decimal(int(raw or 0)) * UNIT
        for percent in sorted(set(thresholds)):
            if spent * 100 < limit * percent:
                break
            event = make_event(
                "billing.budget_threshold",
                BudgetThreshold(
                    threshold_percent=percent,
                    spent_usd=str(spent.normalize()),
                    limit_usd=str(limit),
                    period=period,
                ),
                org_id=org,
                key=f"{org}:{period}:{percent}",
                subject={"period": period},
                source="billing",
            )
            candidates.append((flag_key(org, period, percent), event))
    if not candidates:
        return []
    told = await redis.mget([flag for flag, _ in candidates])
    events = [ev for (_, ev), seen in zip(candidates, told, strict=True) if seen is None]
    if events:
        await emit_now(redis, events)  # first: a flag set without its event would lose it
        async with redis.pipeline(transaction=False) as pipe:
            for flag, _ in candidates:
                pipe.set(flag, b"1", ex=FLAG_TTL_S)
            await pipe.execute()
        for ev in events:
            percent = ev.data["threshold_percent"]
            log.info("organization %s: budget threshold %s %%", ev.org_id, percent)
    return events
