"""Invoices mirrored from Stripe's invoice.* webhooks: each event re-reads the invoice (so
events late or out of order never roll it back), listed newest first, paginated, with
Stripe's hosted page and PDF; without an API key the newest event's invoice is kept."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import stripe
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.entitlements import entitlements_key
from libs.testing import Infra, auth_headers, client_for, principal
from services.billing.app import build_app
from services.billing.settings import BillingSettings
from tests.billing.conftest import Factory
from tests.billing.test_stripe_webhooks import SECRET, post, process, subscription_event
from tests.support.fakes.localstripe_server import (
    API_KEY,
    card_payment_method,
    deliver,
    deliver_until,
    localstripe,
)

INVOICE_TYPES = (
    "invoice.created",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_succeeded",
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with localstripe() as url:
        yield url


async def test_invoices_are_mirrored_whatever_the_order_and_paginated(
    emulator: str, infra: Infra, db: AsyncConnection, factory: Factory, redis: Redis
) -> None:
    settings = BillingSettings(
        stripe_api_key=API_KEY, stripe_api_base=emulator, stripe_webhook_secret=SECRET
    )
    sdk = stripe.StripeClient(API_KEY, base_addresses={"api": emulator})
    admin = principal(roles=["admin"])
    h = auth_headers(admin)
    async with client_for(build_app(settings), connection=db) as c:
        # the organization's Stripe customer (made lazily), with a card
        assert (await c.post("/v1/billing/setup_intent", headers=h)).status_code == 201
        customer = str(sdk.v1.setup_intents.list(params={"limit": 100}).data[-1].customer)
        pm = card_payment_method(emulator)
        sdk.v1.payment_methods.attach(pm, params={"customer": customer})
        sdk.v1.customers.update(
            customer, params={"invoice_settings": {"default_payment_method": pm}}
        )
        # three invoices (the emulator makes one per new subscription: 20.00 and 90.00 USD)
        ids = []
        for price in ("price_pro_monthly", "price_team_monthly", "price_pro_monthly"):
            sub = sdk.v1.subscriptions.create(
                params={"customer": customer, "items": [{"price": price}]}
            )
            ids.append(str(sub.latest_invoice))
        # every event, newest first: the draft's invoice.created arrives after invoice.paid
        seen: set[str] = set()
        await deliver_until(emulator, c, SECRET, ("invoice.paid",), set(), "invoice.paid")
        await deliver(emulator, c, SECRET, INVOICE_TYPES, seen, newest_first=True)
        await process(infra, factory, settings)

        page = await c.get("/v1/billing/invoices", params={"limit": 2}, headers=h)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["has_more"] is True and len(body["data"]) == 2
        rest = await c.get(
            "/v1/billing/invoices", params={"limit": 2, "after": body["data"][-1]["id"]}, headers=h
        )
        assert rest.status_code == 200 and rest.json()["has_more"] is False
        listed = body["data"] + rest.json()["data"]
        assert sorted(i["id"] for i in listed) == sorted(ids)
        assert len({i["id"] for i in listed}) == 3
        for inv in listed:
            assert inv["status"] == "paid" and inv["currency"] == "usd"
            assert inv["amount_paid"] == inv["amount_due"] in (2000, 9000)
            assert inv["hosted_invoice_url"] == f"{emulator}/invoice/{inv['id']}"
            assert inv["invoice_pdf"] == f"{emulator}/invoice/{inv['id']}/pdf"

        # another organization sees none of them, and cannot page from their ids
        other = auth_headers(principal(roles=["admin"]))
        assert (await c.get("/v1/billing/invoices", headers=other)).json()["data"] == []
        cursor = await c.get("/v1/billing/invoices", params={"after": ids[0]}, headers=other)
        assert cursor.status_code == 422 and cursor.json()["error"]["code"] == "invalid_cursor"
        assert (
            await c.get("/v1/billing/invoices", params={"limit": 0}, headers=h)
        ).status_code == 422
    assert admin.org_id
    await redis.delete(entitlements_key(admin.org_id))


def invoice(event_id: str, type_: str, created: int, status: str) -> dict[str, object]:
    obj = {
        "id": "in_mirror",
        "object": "invoice",
        "customer": "cus_123",
        "status": status,
        "currency": "usd",
        "total": 1999,
        "amount_due": 1999,
        "amount_paid": 1999 if status == "paid" else 0,
        "created": created,
        "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1/test_1",
        "invoice_pdf": "https://pay.stripe.com/invoice/acct_1/test_1/pdf",
    }
    return {
        "id": event_id,
        "object": "event",
        "created": created,
        "type": type_,
        "data": {"object": obj},
    }


async def test_without_an_api_key_the_newest_event_wins(
    infra: Infra, db: AsyncConnection, factory: Factory, redis: Redis
) -> None:
    settings = BillingSettings(stripe_webhook_secret=SECRET)
    org = uuid.uuid4()
    t0 = int(time.time()) - 100
    async with client_for(build_app(settings), connection=db) as c:
        assert (
            await post(c, subscription_event("evt_m0", "customer.subscription.created", org, t0))
        ).status_code == 200
        assert (
            await post(c, invoice("evt_m2", "invoice.paid", t0 + 20, "paid"))
        ).status_code == 200
        assert (
            await post(c, invoice("evt_m1", "invoice.finalized", t0 + 10, "open"))
        ).status_code == 200
        await process(infra, factory, settings)
        listed = await c.get("/v1/billing/invoices", headers=auth_headers(principal(org_id=org)))
    data = listed.json()["data"]
    assert [(i["id"], i["status"], i["amount_paid"]) for i in data] == [("in_mirror", "paid", 1999)]
    assert data[0]["invoice_pdf"].endswith("/pdf")
    await redis.delete(entitlements_key(org))


async def test_a_deleted_draft_leaves_the_mirror(
    emulator: str, infra: Infra, db: AsyncConnection, factory: Factory, redis: Redis
) -> None:
    settings = BillingSettings(
        stripe_api_key=API_KEY, stripe_api_base=emulator, stripe_webhook_secret=SECRET
    )
    sdk = stripe.StripeClient(API_KEY, base_addresses={"api": emulator})
    admin = principal(roles=["admin"])
    h = auth_headers(admin)
    async with client_for(build_app(settings), connection=db) as c:
        assert (await c.post("/v1/billing/setup_intent", headers=h)).status_code == 201
        customer = str(sdk.v1.setup_intents.list(params={"limit": 100}).data[-1].customer)
        pm = card_payment_method(emulator)
        sdk.v1.payment_methods.attach(pm, params={"customer": customer})
        sdk.v1.customers.update(
            customer, params={"invoice_settings": {"default_payment_method": pm}}
        )
        sub = sdk.v1.subscriptions.create(
            params={"customer": customer, "items": [{"price": "price_pro_monthly"}]}
        )
        sdk.v1.invoice_items.create(params={"customer": customer, "amount": 500, "currency": "usd"})
        draft = sdk.v1.invoices.create(params={"customer": customer, "subscription": sub.id})
        seen: set[str] = set()
        await deliver(emulator, c, SECRET, ("invoice.created",), seen)
        await process(infra, factory, settings)
        listed = (await c.get("/v1/billing/invoices", headers=h)).json()["data"]
        assert (draft.id, "draft") in [(i["id"], i["status"]) for i in listed]
        assert len(listed) == 2  # and the subscription's first invoice

        sdk.v1.invoices.delete(str(draft.id))
        await deliver(emulator, c, SECRET, ("invoice.deleted",), seen)
        await process(infra, factory, settings)
        after = (await c.get("/v1/billing/invoices", headers=h)).json()["data"]
        assert [i["id"] for i in after] == [i["id"] for i in listed if i["id"] != draft.id]
    assert admin.org_id
    await redis.delete(entitlements_key(admin.org_id))
