"""Paying through Stripe's own pages: a Checkout Session to start a subscription (the
subscription arrives by webhook: checkout.session.completed and customer.subscription.*),
a SetupIntent to collect a card for the API path (POST /v1/billing/subscription/stripe with
its payment_method), and a customer portal session to manage cards, invoices and the plan."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from libs.errors import Conflict, ValidationFailed
from services.billing.checkout.schemas import (
    CheckoutCreate,
    CheckoutOut,
    PortalCreate,
    PortalOut,
    SetupIntentOut,
)
from services.billing.stripe_api import stripe_call, stripe_client
from services.billing.subscriptions.service import SubscriptionService

# a subscription in these states still stands: change it, do not start another
LIVE = ("active", "trialing", "past_due", "unpaid", "incomplete", "paused")


class CheckoutService:
    def __init__(self, subscriptions: SubscriptionService) -> None:
        self.subs = subscriptions
        self.org_id = subscriptions.org_id

    async def checkout(self, body: CheckoutCreate) -> CheckoutOut:
        plan = self.subs.plans.get(body.plan)
        if plan is None or not plan.stripe_price:
            raise ValidationFailed(
                f"No plan {body.plan!r} for sale; GET /v1/billing/plans lists them",
                code="unknown_plan",
            )
        client = stripe_client(self.subs.settings)
        sub = await self.subs.view.current()
        if sub.stripe_subscription_id and sub.status in LIVE:
            raise Conflict(
                "This organization already has a paid subscription: change its plan with "
                "POST /v1/billing/subscription/stripe",
                code="already_subscribed",
            )
        customer = await self.subs.customer(client, sub)
        org = str(self.org_id)
        subscription_data: dict[str, Any] = {"metadata": {"org_id": org}}
        if plan.trial_days:
            subscription_data["trial_period_days"] = plan.trial_days
        params: dict[str, Any] = {
            "mode": "subscription",
            "customer": customer,
            "line_items": [{"price": plan.stripe_price, "quantity": 1}],
            "success_url": str(body.success_url),
            "client_reference_id": org,
            "metadata": {"org_id": org, "plan": plan.id},
            "subscription_data": subscription_data,
        }
        if body.cancel_url is not None:
            params["cancel_url"] = str(body.cancel_url)
        session = await stripe_call(
            client.v1.checkout.sessions.create,
            params=params,
            options={"idempotency_key": f"checkout:{org}:{uuid.uuid4()}"},
        )
        expires = session.get("expires_at")
        return CheckoutOut(
            id=str(session["id"]),
            url=str(session["url"]),
            plan=plan.id,
            status=str(session.get("status") or "open"),
            expires_at=datetime.fromtimestamp(int(expires), UTC) if expires else None,
        )

    async def setup_intent(self) -> SetupIntentOut:
        client = stripe_client(self.subs.settings)
        sub = await self.subs.view.current()
        customer = await self.subs.customer(client, sub)
        intent = await stripe_call(
            client.v1.setup_intents.create,
            params={"customer": customer, "usage": "off_session"},
            options={"idempotency_key": f"setup:{self.org_id}:{uuid.uuid4()}"},
        )
        return SetupIntentOut(
            id=str(intent["id"]),
            client_secret=str(intent["client_secret"]),
            status=str(intent["status"]),
        )

    async def portal(self, body: PortalCreate) -> PortalOut:
        client = stripe_client(self.subs.settings)
        sub = await self.subs.view.current()
        if not sub.stripe_customer_id:
            raise Conflict(
                "This organization has never paid through Stripe: subscribe first",
                code="no_customer",
            )
        params: dict[str, Any] = {"customer": sub.stripe_customer_id}
        if body.return_url is not None:
            params["return_url"] = str(body.return_url)
        session = await stripe_call(client.v1.billing_portal.sessions.create, params=params)
        return PortalOut(url=str(session["url"]))
