"""Plans, an organization's subscription, its entitlements (published to Redis) and its
usage against each limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.entitlements import Entitlements, publish
from libs.errors import Conflict, ValidationFailed
from libs.identity import Principal
from services.billing.models import Subscription
from services.billing.plans.catalogue import PlanCatalogue
from services.billing.plans.repository import SubscriptionRepository
from services.billing.plans.schemas import (
    LimitUsage,
    PlanList,
    SubscriptionOut,
    SubscriptionUpdate,
)
from services.billing.usage.partitions import add_months, month_of
from services.billing.usage.repository import UsageRepository


def month_period(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding ``now``: [start, end)."""
    first = month_of(now)
    start = datetime(first.year, first.month, 1, tzinfo=UTC)
    nxt = add_months(first, 1)
    return start, datetime(nxt.year, nxt.month, 1, tzinfo=UTC)


DEFAULT_GRACE = timedelta(days=7)
# the states in which a subscription gives its plan (past_due: for the grace period)
PAYING = ("active", "trialing", "past_due")


def entitlements_of(
    sub: Subscription, plans: PlanCatalogue, grace: timedelta = DEFAULT_GRACE
) -> Entitlements:
    """What the subscription allows: its plan's limits, its budget if lower; an unknown plan
    (removed from the configuration) gives the default plan's; canceled: the default plan;
    past_due longer than ``grace``: frozen (the llm refuses calls with account_frozen)."""
    plan = plans.get(sub.plan) or plans.default
    status = sub.status
    if status == "canceled":
        plan, status = plans.default, "active"
    elif status not in PAYING:
        # incomplete (the first payment not made), incomplete_expired, unpaid, paused: the
        # default plan's entitlements until Stripe says it is paid
        plan = plans.default
    elif (
        status in ("past_due", "unpaid")
        and sub.past_due_since is not None
        and datetime.now(UTC) - sub.past_due_since >= grace
    ):
        status = "frozen"
    ent = plan.entitlements(status, sub.current_period_start.isoformat())
    own = sub.monthly_budget_usd
    cap = ent.limits.monthly_spend_usd
    if own is not None and (cap is None or own < cap):
        ent.limits = ent.limits.model_copy(update={"monthly_spend_usd": own})
    return ent


class PlanService:
    def __init__(
        self,
        session: AsyncSession,
        redis: Redis,
        plans: PlanCatalogue,
        principal: Principal,
        grace: timedelta = DEFAULT_GRACE,
    ) -> None:
        self.grace = grace
        self.repo = SubscriptionRepository(session)
        self.usage = UsageRepository(session)
        self.redis = redis
        self.plans = plans
        self.org_id = principal.require_org()

    def list_plans(self) -> PlanList:
        return PlanList(default=self.plans.default.id, data=list(self.plans.plans.values()))

    async def current(self) -> Subscription:
        """The organization's subscription (made on the default plan the first time), its
        period moved on to this month when it ended without Stripe to renew it."""
        now = datetime.now(UTC)
        start, end = month_period(now)
        sub = await self.repo.get_or_create(self.org_id, self.plans.default.id, start, end)
        if sub.current_period_end <= now and sub.stripe_subscription_id is None:
            sub.current_period_start, sub.current_period_end = start, end
        return sub

    async def show(self) -> SubscriptionOut:
        sub = await self.current()
        ent = entitlements_of(sub, self.plans, self.grace)
        await publish(self.redis, self.org_id, ent)
        return await self.out(sub, ent)

    async def update(self, body: SubscriptionUpdate) -> SubscriptionOut:
        sub = await self.current()
        fields = body.model_fields_set
        if "plan" in fields:
            if sub.stripe_subscription_id and sub.status in PAYING:
                raise Conflict(
                    "This organization pays through Stripe: change plans with "
                    "POST /v1/billing/subscription/stripe",
                    code="managed_by_stripe",
                )
            if body.plan is None or self.plans.get(body.plan) is None:
                raise ValidationFailed(
                    f"No plan {body.plan!r}; GET /v1/billing/plans lists them",
                    code="unknown_plan",
                )
            sub.plan, sub.status = body.plan, "active"
        if "monthly_budget_usd" in fields:
            sub.monthly_budget_usd = body.monthly_budget_usd
        ent = entitlements_of(sub, self.plans, self.grace)
        await self.repo.session.flush()
        await publish(self.redis, self.org_id, ent)
        return await self.out(sub, ent)

    async def out(self, sub: Subscription, ent: Entitlements) -> SubscriptionOut:
        first = sub.current_period_start.date()
        last = datetime.now(UTC).date()
        spend, tokens = await self.usage.spend(self.org_id, first, last)
        stored = await self.usage.latest_storage(self.org_id)
        limits = ent.limits
        used: dict[str, tuple[Any, Any, str]] = {
            "rpm": (limits.rpm, None, "minute"),
            "tpm": (limits.tpm, None, "minute"),
            "monthly_spend_usd": (limits.monthly_spend_usd, spend, "month"),
            "monthly_tokens": (limits.monthly_tokens, tokens, "month"),
            "storage_bytes": (limits.storage_bytes, stored, "now"),
            "vector_stores": (limits.vector_stores, None, "now"),
            "seats": (limits.seats, None, "now"),
            "batch_jobs": (limits.batch_jobs, None, "now"),
        }
        return SubscriptionOut(
            plan=sub.plan,
            status="frozen" if ent.status == "frozen" else sub.status,
            current_period_start=sub.current_period_start,
            current_period_end=sub.current_period_end,
            cancel_at_period_end=sub.cancel_at_period_end,
            monthly_budget_usd=sub.monthly_budget_usd,
            entitlements=ent,
            usage=[
                LimitUsage(name=name, limit=limit, used=value, period=period)
                for name, (limit, value, period) in used.items()
            ],
        )


async def publish_default(redis: Redis, plans: PlanCatalogue) -> None:
    """The default plan's entitlements, for organizations billing has not seen yet."""
    await publish(redis, None, plans.default.entitlements())
