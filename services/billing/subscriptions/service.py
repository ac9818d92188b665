"""Paid subscriptions through Stripe, with the official SDK: a customer per organization
(created lazily), subscribe, change plans (Stripe prorates by default), cancel at period end,
resume. Each answer's subscription object is applied at once (as its webhook will be again:
the same state, so the order does not matter) and the entitlements republished.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.entitlements import publish
from libs.errors import Conflict, ValidationFailed
from libs.identity import Principal
from services.billing.models import Subscription
from services.billing.plans.catalogue import PlanCatalogue
from services.billing.plans.schemas import SubscriptionOut
from services.billing.plans.service import PlanService, entitlements_of
from services.billing.settings import BillingSettings
from services.billing.stripe_api import stripe_call, stripe_client
from services.billing.stripe_webhooks.service import apply_subscription
from services.billing.subscriptions.schemas import StripeSubscribe


class SubscriptionService:
    def __init__(
        self,
        session: AsyncSession,
        redis: Redis,
        plans: PlanCatalogue,
        principal: Principal,
        settings: BillingSettings,
    ) -> None:
        self.grace = timedelta(days=settings.past_due_grace_days)
        self.plans = plans
        self.redis = redis
        self.settings = settings
        self.principal = principal
        self.org_id = principal.require_org()
        self.view = PlanService(session, redis, plans, principal, self.grace)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await stripe_call(fn, *args, **kwargs)

    async def customer(self, client: stripe.StripeClient, sub: Subscription) -> str:
        if sub.stripe_customer_id:
            return sub.stripe_customer_id
        customer = await self._call(
            client.v1.customers.create,
            params={"metadata": {"org_id": str(self.org_id)}},
            options={"idempotency_key": f"customer:{self.org_id}"},
        )
        sub.stripe_customer_id = str(customer["id"])
        return sub.stripe_customer_id

    async def subscribe(self, body: StripeSubscribe) -> SubscriptionOut:
        plan = self.plans.get(body.plan)
        if plan is None or not plan.stripe_price:
            raise ValidationFailed(
                f"No plan {body.plan!r} for sale; GET /v1/billing/plans lists them",
                code="unknown_plan",
            )
        client = stripe_client(self.settings)
        sub = await self.view.current()
        customer = await self.customer(client, sub)
        if body.payment_method:
            await self._call(
                client.v1.payment_methods.attach,
                body.payment_method,
                params={"customer": customer},
            )
            await self._call(
                client.v1.customers.update,
                customer,
                params={"invoice_settings": {"default_payment_method": body.payment_method}},
            )
        if sub.stripe_subscription_id and sub.status not in ("canceled", "incomplete_expired"):
            current = await self._call(client.v1.subscriptions.retrieve, sub.stripe_subscription_id)
            item = current["items"]["data"][0]["id"]
            # Stripe prorates a plan change by default (proration_behavior create_prorations)
            obj = await self._call(
                client.v1.subscriptions.update,
                sub.stripe_subscription_id,
                params={"items": [{"id": item, "price": plan.stripe_price}]},
            )
        else:
            params: dict[str, Any] = {
                "customer": customer,
                "items": [{"price": plan.stripe_price}],
                "metadata": {"org_id": str(self.org_id)},
            }
            if plan.trial_days:
                params["trial_period_days"] = plan.trial_days
            obj = await self._call(
                client.v1.subscriptions.create,
                params=params,
                options={"idempotency_key": f"subscribe:{self.org_id}:{uuid.uuid4()}"},
            )
        return await self._applied(sub, obj)

    async def set_cancel(self, cancel: bool) -> SubscriptionOut:
        """Cancel at the end of the period (``cancel``), or take that back (resume)."""
        sub = await self.view.current()
        if not sub.stripe_subscription_id:
            raise Conflict("This organization has no paid subscription", code="no_subscription")
        client = stripe_client(self.settings)
        obj = await self._call(
            client.v1.subscriptions.update,
            sub.stripe_subscription_id,
            params={"cancel_at_period_end": cancel},
        )
        return await self._applied(sub, obj)

    async def _applied(self, sub: Subscription, obj: dict[str, Any]) -> SubscriptionOut:
        apply_subscription(sub, obj, self.plans, datetime.now(UTC))
        await self.view.repo.session.flush()
        ent = entitlements_of(sub, self.plans, self.grace)
        await publish(self.redis, self.org_id, ent)
        return await self.view.out(sub, ent)
