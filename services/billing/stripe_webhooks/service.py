"""Stripe webhooks: verified with the SDK (signature and timestamp tolerance), stored once by
event id (a replay is acknowledged, never applied twice), applied by a job so Stripe gets its
2xx at once. Applying is safe out of order: an event older than the last one applied to a
subscription changes nothing, and the state comes from the event's object (the subscription
as it was when the event was made), never from a delta.

The subscription's state drives the entitlements: active or trialing: the plan whose
``stripe_price`` the subscription's item has; past_due: the plan still, frozen once the grace
period (BILLING_PAST_DUE_GRACE_DAYS) has passed; paid again: active; canceled: the default
plan.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import stripe
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.entitlements import publish
from libs.errors import BadRequest, NotFound
from libs.notify import PaymentFailed, emit
from libs.queue import enqueue
from services.billing.invoices.service import sync_invoice
from services.billing.models import Subscription
from services.billing.plans.catalogue import PlanCatalogue
from services.billing.plans.repository import SubscriptionRepository
from services.billing.plans.service import PAYING, entitlements_of, month_period
from services.billing.settings import BillingSettings
from services.billing.stripe_webhooks.repository import StripeEventRepository

log = logging.getLogger("aistack.billing.stripe")

PROCESS_STRIPE_EVENT = "process_stripe_event"
SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
)
# the invoice events that change the subscription's state (every invoice.* event updates the
# invoices' mirror: services/billing/invoices/service.py)
INVOICE_EVENTS = ("invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed")
CHECKOUT_COMPLETED = "checkout.session.completed"


def _at(epoch: Any) -> datetime | None:
    return datetime.fromtimestamp(int(epoch), UTC) if epoch is not None else None


async def receive(
    session: AsyncSession, redis: Redis, settings: BillingSettings, payload: bytes, signature: str
) -> dict[str, Any]:
    """Verify and store a webhook event, and queue its processing (after the commit)."""
    secret = settings.stripe_webhook_secret
    if secret is None:
        # not a server fault: this deployment takes no Stripe webhooks
        raise NotFound("Stripe is not configured here", code="stripe_not_configured")
    try:
        event = stripe.Webhook.construct_event(
            payload, signature, secret.get_secret_value(), settings.stripe_webhook_tolerance_s
        )
    except stripe.SignatureVerificationError as exc:
        # a bad signature, or a good one older than the tolerance (a replay)
        raise BadRequest(f"Stripe signature refused: {exc}", code="invalid_signature") from exc
    except ValueError as exc:
        raise BadRequest("The payload is not a Stripe event", code="invalid_payload") from exc
    data = event.to_dict()
    event_id, type_ = data.get("id"), data.get("type")
    if not isinstance(event_id, str) or not isinstance(type_, str) or not event_id:
        raise BadRequest("The payload is not a Stripe event", code="invalid_payload")
    try:
        created = _at(data.get("created")) or datetime.now(UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise BadRequest("The event's created time is invalid", code="invalid_payload") from exc
    events = StripeEventRepository(session)
    duplicate = not await events.record(event_id[:255], type_[:100], created, orjson.loads(payload))
    if duplicate:
        log.info("Stripe event %s received again: already recorded", event_id)
        # stored but not applied: its job may never have been queued (Redis down when the
        # first delivery committed: that delivery failed, and Stripe retries), so it is queued
        # again; the job id keeps it to one job while one is queued or running
        if not await events.unprocessed(event_id[:255]):
            return {"received": True, "duplicate": True}
    await enqueue(
        session,
        redis,
        service="billing",
        function=PROCESS_STRIPE_EVENT,
        args=[event_id],
        job_id=f"stripe:{event_id}",
        internal=True,
    )
    return {"received": True, "duplicate": duplicate}


class StripeState:
    """Applies stored events to subscriptions and republishes their entitlements."""

    def __init__(
        self,
        session: AsyncSession,
        redis: Redis,
        plans: PlanCatalogue,
        grace: timedelta,
        client: stripe.StripeClient | None = None,
    ) -> None:
        self.client = client  # None: Stripe's API is not configured (events only)
        self.session = session
        self.events = StripeEventRepository(session)
        self.subs = SubscriptionRepository(session)
        self.redis = redis
        self.plans = plans
        self.grace = grace

    async def _subscription(self, obj: dict[str, Any]) -> Subscription | None:
        org = (obj.get("metadata") or {}).get("org_id")
        customer = obj.get("customer")
        if org:
            try:
                org_id = uuid.UUID(str(org))
            except ValueError:
                return None
            start, end = month_period(datetime.now(UTC))
            return await self.subs.get_or_create(org_id, self.plans.default.id, start, end)
        if isinstance(customer, str):
            return await self.events.subscription_of_customer(customer)
        return None

    async def process(self, event_id: str) -> str:
        """Apply one stored event (once); return what happened."""
        row = await self.events.by_id(event_id)
        if row is None:
            return "unknown"
        if row.processed_at is not None:
            return "already processed"
        row.processed_at = datetime.now(UTC)
        payload: dict[str, Any] = dict(row.payload)
        obj: dict[str, Any] = (payload.get("data") or {}).get("object") or {}
        invoice = row.type.startswith("invoice.")
        if row.type not in (*SUBSCRIPTION_EVENTS, CHECKOUT_COMPLETED) and not invoice:
            return "ignored"
        sub = await self._subscription(obj)
        if sub is None:
            log.warning("Stripe event %s (%s) names no known organization", row.id, row.type)
            return "no organization"
        mirrored = ""
        if invoice:
            # the mirror re-reads the invoice's current state: whatever the order of events
            mirrored = await sync_invoice(self.session, sub.org_id, obj, row.created, self.client)
            if row.type not in INVOICE_EVENTS:
                return mirrored
        if row.type == CHECKOUT_COMPLETED:
            return await self._checkout_completed(sub, obj, row.created)
        if row.type in SUBSCRIPTION_EVENTS and self.client is not None:
            return await self._resync(self.client, sub, obj, row.created)
        if sub.stripe_event_at is not None and row.created < sub.stripe_event_at:
            return "older than the state applied"
        sub.stripe_event_at = row.created
        if row.type in SUBSCRIPTION_EVENTS:
            self._apply_subscription(sub, row.type, obj, row.created)
        else:
            self._apply_invoice(sub, row.type, row.created)
            if row.type == "invoice.payment_failed":
                await self._tell_payment_failed(sub, obj)
        await self.session.flush()
        await publish(self.redis, sub.org_id, entitlements_of(sub, self.plans, self.grace))
        return f"{mirrored}; applied: {sub.plan} {sub.status}".lstrip("; ")

    async def _resync(
        self,
        client: stripe.StripeClient,
        sub: Subscription,
        event_obj: dict[str, Any],
        at: datetime,
    ) -> str:
        """A subscription event with Stripe's API at hand: the subscription as Stripe has it
        now is applied, so events of the same second, late or out of order, all end in the
        same state. A former subscription's end leaves a newer live one alone."""
        sub_id = event_obj.get("id")
        if not isinstance(sub_id, str):
            return "no subscription id"
        current = await _retrieve_subscription(client, sub_id)
        if current is None:
            return f"subscription {sub_id} unknown to Stripe: ignored"
        status = str(current.get("status") or "")
        other = sub.stripe_subscription_id not in (None, sub_id)
        if other and status in ("canceled", "incomplete_expired") and sub.status in PAYING:
            return "a former subscription: ignored"
        apply_subscription(sub, current, self.plans, at, deleted=status == "canceled")
        sub.stripe_event_at = max(filter(None, (sub.stripe_event_at, at)))
        await self.session.flush()
        await publish(self.redis, sub.org_id, entitlements_of(sub, self.plans, self.grace))
        return f"applied (re-read): {sub.plan} {sub.status}"

    async def _checkout_completed(
        self, sub: Subscription, session: dict[str, Any], at: datetime
    ) -> str:
        """A Checkout Session paid: its subscription, as Stripe has it now, becomes the
        organization's (its customer.subscription.* events apply the same state again)."""
        if isinstance(session.get("customer"), str):
            sub.stripe_customer_id = session["customer"]
        sub_id = session.get("subscription")
        if session.get("mode") != "subscription" or not isinstance(sub_id, str):
            return "checkout without a subscription"
        if self.client is None:
            return "checkout: the subscription's own events apply it"
        current = await _retrieve_subscription(self.client, sub_id)
        if current is None:
            return f"checkout: subscription {sub_id} unknown to Stripe"
        apply_subscription(sub, current, self.plans, at)
        sub.stripe_event_at = max(filter(None, (sub.stripe_event_at, at)))
        await self.session.flush()
        await publish(self.redis, sub.org_id, entitlements_of(sub, self.plans, self.grace))
        return f"checkout: {sub.plan} {sub.status}"

    def _apply_subscription(
        self, sub: Subscription, type_: str, obj: dict[str, Any], at: datetime
    ) -> None:
        deleted = type_ == "customer.subscription.deleted"
        apply_subscription(sub, obj, self.plans, at, deleted=deleted)

    async def _tell_payment_failed(self, sub: Subscription, invoice: dict[str, Any]) -> None:
        """The organization's admins are told (once per invoice and attempt, after the commit)."""
        invoice_id = str(invoice.get("id") or "")[:255]
        attempt = int(invoice.get("attempt_count") or 1)
        currency = str(invoice.get("currency") or "usd")[:8]
        await emit(
            self.session,
            self.redis,
            "billing.payment_failed",
            PaymentFailed(
                invoice_id=invoice_id,
                amount_due=str(major_units(int(invoice.get("amount_due") or 0), currency)),
                currency=currency,
                attempt_count=attempt,
                next_attempt_at=_at(invoice.get("next_payment_attempt")),
            ),
            source="billing",
            org_id=sub.org_id,
            subject={"invoice_id": invoice_id},
            key=f"{invoice_id}:{attempt}",
        )

    def _apply_invoice(self, sub: Subscription, type_: str, at: datetime) -> None:
        if type_ == "invoice.payment_failed":
            if sub.status in ("active", "trialing"):
                sub.status = "past_due"
            sub.past_due_since = sub.past_due_since or at
        elif sub.status in ("past_due", "unpaid"):
            sub.status, sub.past_due_since = "active", None


async def _retrieve_subscription(client: stripe.StripeClient, sub_id: str) -> dict[str, Any] | None:
    """The subscription as Stripe has it now; None when Stripe has no such subscription
    (another failure is raised: the job tries again later)."""
    try:
        found = await asyncio.to_thread(client.v1.subscriptions.retrieve, sub_id)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return None
        raise
    out: dict[str, Any] = found.to_dict()
    return out


# Stripe's amounts are in the currency's smallest unit; these have no minor unit
ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)


def major_units(amount: int, currency: str) -> Decimal:
    """A Stripe amount as a decimal of the currency (1999 usd: 19.99; 500 jpy: 500)."""
    if currency.lower() in ZERO_DECIMAL:
        return Decimal(amount)
    return Decimal(amount).scaleb(-2)


def plan_of(obj: dict[str, Any], plans: PlanCatalogue) -> str | None:
    """The plan whose ``stripe_price`` a Stripe subscription's item has (its price or, for
    the legacy API and emulators, its plan)."""
    for item in (obj.get("items") or {}).get("data") or []:
        price = (item.get("price") or item.get("plan") or {}).get("id")
        for plan in plans.plans.values():
            if plan.stripe_price and plan.stripe_price == price:
                return plan.id
    return None


def apply_subscription(
    sub: Subscription,
    obj: dict[str, Any],
    plans: PlanCatalogue,
    at: datetime,
    *,
    deleted: bool = False,
) -> None:
    """Copy a Stripe subscription object's state onto the organization's subscription."""
    status = "canceled" if deleted else str(obj.get("status") or "active")
    if isinstance(obj.get("customer"), str):
        sub.stripe_customer_id = obj["customer"]
    sub.stripe_subscription_id = obj.get("id") or sub.stripe_subscription_id
    plan = plan_of(obj, plans)
    if status == "canceled":
        sub.plan = plans.default.id
    elif plan is not None:
        sub.plan = plan
    sub.status = status
    sub.cancel_at_period_end = bool(obj.get("cancel_at_period_end"))
    item = ((obj.get("items") or {}).get("data") or [{}])[0]
    start = _at(obj.get("current_period_start") or item.get("current_period_start"))
    end = _at(obj.get("current_period_end") or item.get("current_period_end"))
    if start and end:
        sub.current_period_start, sub.current_period_end = start, end
    if status == "past_due":
        sub.past_due_since = sub.past_due_since or at
    else:
        sub.past_due_since = None
