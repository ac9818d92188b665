"""Data access of Stripe webhook events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from libs.orm import Repository
from services.billing.models import StripeEvent, Subscription


class StripeEventRepository(Repository[StripeEvent]):
    model = StripeEvent

    async def record(self, event_id: str, type_: str, created: datetime, payload: Any) -> bool:
        """Store a received event; False when its id was received before."""
        stmt = (
            insert(StripeEvent)
            .values(id=event_id, type=type_, created=created, payload=payload)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(StripeEvent.id)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none() is not None

    async def unprocessed(self, event_id: str) -> bool:
        """Whether the event is stored and not applied yet."""
        stmt = select(StripeEvent.id).where(
            StripeEvent.id == event_id, StripeEvent.processed_at.is_(None)
        )
        return (await self.session.scalar(stmt)) is not None

    async def by_id(self, event_id: str) -> StripeEvent | None:
        return await self.session.scalar(
            select(StripeEvent).where(StripeEvent.id == event_id).with_for_update()
        )

    async def subscription_of_customer(self, customer: str) -> Subscription | None:
        return await self.session.scalar(
            select(Subscription)
            .where(Subscription.stripe_customer_id == customer)
            .with_for_update()
        )
