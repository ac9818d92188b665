"""Stripe webhooks: Stripe's signature (the official SDK's scheme) checked, each event id
applied once, safe out of order; the subscription's state drives the entitlements."""

from __future__ import annotations

import pickle
import time
import uuid
from typing import Any

import httpx
import orjson
import stripe
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.entitlements import EntitlementsCache, entitlements_key
from libs.notify import Event, event_id_for, job_id_for
from libs.testing import Infra, auth_headers, client_for, principal
from libs.usage import BILLING_SERVICE
from services.billing import tasks as billing_tasks
from services.billing.app import build_app
from services.billing.settings import BillingSettings
from tests.billing.conftest import Factory
from tests.support.workers import run_burst

SECRET = "whsec_test_secret"
URL = "/v1/billing/webhooks/stripe"


def subscription_event(
    event_id: str, type_: str, org: uuid.UUID, created: int, **obj: Any
) -> dict[str, Any]:
    """A Stripe event of a subscription, in Stripe's wire format."""
    sub = {
        "id": "sub_123",
        "object": "subscription",
        "customer": "cus_123",
        "status": "active",
        "cancel_at_period_end": False,
        "metadata": {"org_id": str(org)},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_1",
                    "object": "subscription_item",
                    "price": {"id": "price_pro_monthly", "object": "price"},
                    "current_period_start": created,
                    "current_period_end": created + 30 * 86400,
                }
            ],
        },
        **obj,
    }
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2025-10-29.clover",
        "created": created,
        "type": type_,
        "livemode": False,
        "pending_webhooks": 1,
        "data": {"object": sub},
    }


def invoice_event(event_id: str, type_: str, created: int) -> dict[str, Any]:
    invoice = {"id": "in_1", "object": "invoice", "customer": "cus_123", "status": "paid"}
    return {
        "id": event_id,
        "object": "event",
        "created": created,
        "type": type_,
        "data": {"object": invoice},
    }


async def post(
    c: httpx.AsyncClient, event: dict[str, Any], *, secret: str = SECRET, at: int | None = None
) -> httpx.Response:
    payload = orjson.dumps(event).decode()
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, at)
    return await c.post(
        URL,
        content=payload,
        headers={"stripe-signature": header, "content-type": "application/json"},
    )


async def process(infra: Infra, factory: Factory, settings: BillingSettings) -> None:
    worker = await run_burst(
        infra.redis_url,
        BILLING_SERVICE,
        billing_tasks.functions,
        ctx={"db": factory, "settings": settings},
        max_jobs=1,
    )
    assert worker.jobs_failed == 0


async def test_webhooks_are_verified_applied_once_and_in_order_of_creation(
    infra: Infra, db: AsyncConnection, factory: Factory, redis: Redis
) -> None:
    settings = BillingSettings(stripe_webhook_secret=SECRET, past_due_grace_days=0)
    org = uuid.uuid4()
    admin = principal(org_id=org, roles=["admin"])
    cache = EntitlementsCache(redis, ttl_s=0)
    t0 = int(time.time()) - 100
    async with client_for(build_app(settings), connection=db) as c:
        created = subscription_event("evt_1", "customer.subscription.created", org, t0)
        first = await post(c, created)
        assert first.status_code == 200, first.text
        assert first.json() == {"received": True, "duplicate": False}
        # Stripe retries: acknowledged, never applied twice
        again = await post(c, created)
        assert again.status_code == 200 and again.json()["duplicate"] is True
        # a bad signature, and a good one older than the 300 s tolerance (a replay)
        bad = await post(c, created | {"id": "evt_bad"}, secret="whsec_other")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_signature"
        old = await post(c, created | {"id": "evt_old"}, at=int(time.time()) - 400)
        assert old.status_code == 400 and old.json()["error"]["code"] == "invalid_signature"
        await process(infra, factory, settings)
        ent = await cache.get(org)
        assert ent is not None and (ent.plan, ent.status, ent.limits.rpm) == ("pro", "active", 600)

        # out of order: the newer event (past_due) arrives first, the older (an upgrade to a
        # plan not sold: price unknown) after it; the older one changes nothing
        newer = subscription_event(
            "evt_3", "customer.subscription.updated", org, t0 + 20, status="past_due"
        )
        older = subscription_event("evt_2", "customer.subscription.updated", org, t0 + 10)
        assert (await post(c, newer)).status_code == 200
        assert (await post(c, older)).status_code == 200
        await process(infra, factory, settings)
        sub = (await c.get("/v1/billing/subscription", headers=auth_headers(admin))).json()
        # past_due past its grace period (0 days here): frozen
        assert (sub["plan"], sub["status"]) == ("pro", "frozen")
        ent = await cache.get(org)
        assert ent is not None and ent.status == "frozen"

        # paid: active again; then canceled: the free plan
        assert (await post(c, invoice_event("evt_4", "invoice.paid", t0 + 30))).status_code == 200
        await process(infra, factory, settings)
        ent = await cache.get(org)
        assert ent is not None and (ent.plan, ent.status) == ("pro", "active")
        deleted = subscription_event(
            "evt_5", "customer.subscription.deleted", org, t0 + 40, status="canceled"
        )
        assert (await post(c, deleted)).status_code == 200
        await process(infra, factory, settings)
        ent = await cache.get(org)
        assert ent is not None and ent.plan == "free"
    await redis.delete(entitlements_key(org))


async def test_without_a_webhook_secret_the_endpoint_says_so(db: AsyncConnection) -> None:
    async with client_for(build_app(BillingSettings()), connection=db) as c:
        resp = await post(c, invoice_event("evt_x", "invoice.paid", int(time.time())))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "stripe_not_configured"


async def test_a_failed_payment_tells_the_organizations_admins_once(
    infra: Infra, db: AsyncConnection, factory: Factory, redis: Redis
) -> None:
    settings = BillingSettings(stripe_webhook_secret=SECRET)
    org = uuid.uuid4()
    t0 = int(time.time()) - 100
    async with client_for(build_app(settings), connection=db) as c:
        created = subscription_event("evt_pf1", "customer.subscription.created", org, t0)
        assert (await post(c, created)).status_code == 200
        failed = invoice_event("evt_pf2", "invoice.payment_failed", t0 + 10)
        failed["data"]["object"] |= {"amount_due": 1999, "currency": "usd", "attempt_count": 2}
        assert (await post(c, failed)).status_code == 200
        assert (await post(c, failed)).json()["duplicate"] is True  # Stripe's retry
        await process(infra, factory, settings)
        await process(infra, factory, settings)
    job = job_id_for(event_id_for("billing.payment_failed", "in_1:2"))
    raw = await redis.get(f"arq:job:{job}")
    assert raw is not None
    event = Event.model_validate(pickle.loads(raw)["k"]["event"])
    assert (event.kind, event.org_id, event.user_id) == ("billing.payment_failed", org, None)
    assert event.data["amount_due"] == "19.99" and event.data["currency"] == "usd"
    assert event.data["attempt_count"] == 2
    await redis.delete(entitlements_key(org), f"arq:job:{job}")


async def test_an_event_stored_while_redis_was_down_is_applied_on_stripes_retry(
    infra: Infra, db: AsyncConnection, factory: Factory, redis: Redis
) -> None:
    # the first delivery commits the event, then cannot queue its processing: it fails (a
    # 503, so Stripe retries); the retry finds the event stored and not applied, and queues it
    from tests.support.faults.outages import redis_down

    settings = BillingSettings(stripe_webhook_secret=SECRET)
    org = uuid.uuid4()
    cache = EntitlementsCache(redis, ttl_s=0)
    created = subscription_event(
        "evt_down", "customer.subscription.created", org, int(time.time()) - 10
    )
    app = build_app(settings)
    async with client_for(app, connection=db) as c:
        async with redis_down(app):
            first = await post(c, created)
        assert first.status_code == 503, first.text
        await process(infra, factory, settings)
        before = await cache.get(org)  # nothing was queued: nothing applied
        assert before is None or before.plan == "free", before
        retry = await post(c, created)
        assert retry.status_code == 200 and retry.json()["duplicate"] is True
        await process(infra, factory, settings)
        ent = await cache.get(org)
        assert ent is not None and (ent.plan, ent.status) == ("pro", "active")
        # applied: a later retry queues nothing more
        assert (await post(c, created)).json()["duplicate"] is True
        assert not await redis.exists("arq:job:stripe:evt_down")
    await redis.delete(entitlements_key(org))
