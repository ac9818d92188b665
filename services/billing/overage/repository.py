"""Data access of overage reports."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from libs.orm import Repository
from services.billing.models import OverageReport, Subscription


class OverageRepository(Repository[OverageReport]):
    model = OverageReport

    async def billed_subscriptions(self, plan_ids: list[str]) -> list[Subscription]:
        """Subscriptions on the given plans with a Stripe customer."""
        stmt = select(Subscription).where(
            Subscription.plan.in_(plan_ids), Subscription.stripe_customer_id.is_not(None)
        )
        return list(await self.session.scalars(stmt))

    async def fix(
        self,
        org_id: uuid.UUID,
        period: date,
        spend: Decimal,
        included: Decimal,
        cents: int,
        tokens: int,
    ) -> None:
        """Record the month's overage unless it was recorded before (the first amount stays:
        a re-run sends the same request, which Stripe's idempotency key then answers once)."""
        await self.session.execute(
            insert(OverageReport)
            .values(
                org_id=org_id,
                period=period,
                spend_usd=spend,
                included_usd=included,
                amount_cents=cents,
                currency="usd",
                tokens=tokens,
            )
            .on_conflict_do_nothing(index_elements=["org_id", "period"])
        )

    async def locked(self, org_id: uuid.UUID, period: date) -> OverageReport | None:
        return await self.session.scalar(
            select(OverageReport)
            .where(OverageReport.org_id == org_id, OverageReport.period == period)
            .with_for_update()
        )
