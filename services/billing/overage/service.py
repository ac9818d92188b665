"""Overage (and metered tokens) reported to Stripe at the end of a billing month, exactly once.

For organizations on a plan whose overage policy is ``allow`` (served past the plan's monthly
spend, billed after), the month's spend beyond the plan's ``monthly_spend_usd`` is added to
the Stripe subscription's next invoice as an invoice item. Exactly once: the amount is fixed
in ``billing.overage_reports`` (one row per organization and month) in its own transaction
before anything is sent; the invoice item is created with the idempotency key
``overage:<org>:<YYYY-MM>``, so a run that dies between Stripe's answer and the commit sends
the same request again and Stripe answers it with the item already made; a reported row is
never sent again. A plan with a ``stripe_meter`` also sends the month's tokens to that
Stripe Billing Meter as one meter event whose ``identifier`` (``tokens:<org>:<YYYY-MM>``)
Stripe never takes twice. Billing months are calendar months (UTC), as the budgets' are.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe

from libs.db import SessionFactory, session_scope
from services.billing.models import OverageReport
from services.billing.overage.repository import OverageRepository
from services.billing.plans.catalogue import Plan, PlanCatalogue
from services.billing.usage.partitions import add_months, month_of
from services.billing.usage.repository import UsageRepository

log = logging.getLogger("aistack.billing.overage")


def last_finished_month(now: datetime) -> date:
    return add_months(month_of(now), -1)


def parse_month(value: str) -> date:
    """``YYYY-MM`` as the month's first day."""
    return datetime.strptime(value, "%Y-%m").date()


def idempotency_key(org_id: uuid.UUID, month: date) -> str:
    return f"overage:{org_id}:{month:%Y-%m}"


def cents(usd: Decimal) -> int:
    return int((usd * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


class OverageReporter:
    def __init__(
        self, sessions: SessionFactory, plans: PlanCatalogue, client: stripe.StripeClient
    ) -> None:
        self.sessions = sessions
        self.plans = plans
        self.client = client

    def billed_plans(self) -> dict[str, Plan]:
        """Plans that allow overage and bill it: past a spend limit, or by a Stripe meter."""
        return {
            p.id: p
            for p in self.plans.plans.values()
            if p.overage == "allow" and (p.limits.monthly_spend_usd is not None or p.stripe_meter)
        }

    async def report(self, month: date, now: datetime | None = None) -> dict[str, int]:
        """Report ``month``'s overage of every billed organization; counts of what happened."""
        now = now or datetime.now(UTC)
        if add_months(month, 1) > now.date():
            raise ValueError(f"{month:%Y-%m} has not ended: its overage is not final")
        plans = self.billed_plans()
        async with session_scope(self.sessions) as session:
            subs = await OverageRepository(session).billed_subscriptions(list(plans))
            targets = [
                (s.org_id, s.plan, s.stripe_customer_id, s.stripe_subscription_id) for s in subs
            ]
        counts = {"sent": 0, "already": 0, "none": 0}
        for org_id, plan_id, customer, subscription in targets:
            assert customer is not None
            outcome = await self._report_one(org_id, plans[plan_id], customer, subscription, month)
            counts[outcome] += 1
        return counts

    async def _report_one(
        self,
        org_id: uuid.UUID,
        plan: Plan,
        customer: str,
        subscription: str | None,
        month: date,
    ) -> str:
        included = plan.limits.monthly_spend_usd
        last_day = add_months(month, 1) - timedelta(days=1)
        async with session_scope(self.sessions) as session:
            spend, tokens = await UsageRepository(session).spend(org_id, month, last_day)
            over = max(Decimal(0), spend - included) if included is not None else Decimal(0)
            await OverageRepository(session).fix(
                org_id, month, spend, included or Decimal(0), cents(over), tokens
            )
        async with session_scope(self.sessions) as session:
            row = await OverageRepository(session).locked(org_id, month)
            assert row is not None
            metered = plan.stripe_meter is not None
            if row.reported_at is not None and (not metered or row.meter_reported_at):
                return "already"
            sent = False
            if row.reported_at is None:
                if row.amount_cents > 0:
                    await self._invoice_item(row, plan, customer, subscription)
                    sent = True
                row.reported_at = datetime.now(UTC)
            if plan.stripe_meter and row.meter_reported_at is None:
                if row.tokens > 0:
                    await self._meter_event(row, plan.stripe_meter, customer)
                    sent = True
                row.meter_reported_at = datetime.now(UTC)
        return "sent" if sent else "none"

    async def _invoice_item(
        self, row: OverageReport, plan: Plan, customer: str, subscription: str | None
    ) -> None:
        month = row.period
        params: Any = {
            "customer": customer,
            "amount": row.amount_cents,
            "currency": row.currency,
            "description": f"Usage over the {plan.name} plan's ${row.included_usd:.2f} "
            f"in {month:%B %Y}",
            "metadata": {"org_id": str(row.org_id), "period": f"{month:%Y-%m}", "kind": "overage"},
        }
        if subscription:
            params["subscription"] = subscription
        item = await asyncio.to_thread(
            self.client.v1.invoice_items.create,
            params=params,
            options={"idempotency_key": idempotency_key(row.org_id, month)},
        )
        row.stripe_invoice_item = str(item.id)
        log.info(
            "overage of %s in %s sent: %s cents", row.org_id, f"{month:%Y-%m}", row.amount_cents
        )

    async def _meter_event(self, row: OverageReport, event_name: str, customer: str) -> None:
        """The month's tokens as one meter event, stamped with the month's last second; its
        identifier is the month's, which Stripe refuses to take twice."""
        identifier = f"tokens:{row.org_id}:{row.period:%Y-%m}"
        end = add_months(row.period, 1)
        params: Any = {
            "event_name": event_name,
            "identifier": identifier,
            "timestamp": int(datetime(end.year, end.month, 1, tzinfo=UTC).timestamp()) - 1,
            "payload": {"stripe_customer_id": customer, "value": str(row.tokens)},
        }
        try:
            await asyncio.to_thread(self.client.v1.billing.meter_events.create, params=params)
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_already_exists":
                raise
            log.info("meter event %s was sent before", identifier)  # then the commit failed
        row.meter_event = identifier
