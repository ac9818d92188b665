"""Data access of subscriptions."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from libs.orm import Repository
from services.billing.models import Subscription


class SubscriptionRepository(Repository[Subscription]):
    model = Subscription

    async def get_or_create(
        self, org_id: uuid.UUID, plan: str, start: datetime, end: datetime
    ) -> Subscription:
        """The organization's subscription, made on ``plan`` if it has none (safe to race)."""
        await self.session.execute(
            insert(Subscription)
            .values(
                org_id=org_id,
                plan=plan,
                status="active",
                current_period_start=start,
                current_period_end=end,
                cancel_at_period_end=False,
            )
            .on_conflict_do_nothing(index_elements=["org_id"])
        )
        row = await self.session.scalar(
            select(Subscription).where(Subscription.org_id == org_id).with_for_update()
        )
        assert row is not None
        return row
