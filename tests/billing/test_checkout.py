"""Paying on Stripe's pages, against the Stripe emulator with the official SDK: a Checkout
Session started by aistack and paid there becomes the organization's plan through the
webhooks; a SetupIntent collects the card for the API path; the customer portal link."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import stripe
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.entitlements import EntitlementsCache, entitlements_key
from libs.testing import Infra, auth_headers, client_for, principal
from services.billing.app import build_app
from services.billing.settings import BillingSettings
from tests.billing.conftest import Factory
from tests.billing.test_stripe_webhooks import process
from tests.support.fakes.localstripe_server import (
    API_KEY,
    complete_checkout,
    deliver_until,
    localstripe,
)

SECRET = "whsec_checkout"
TYPES = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "invoice.created",
    "invoice.finalized",
    "invoice.paid",
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with localstripe() as url:
        yield url


def stripe_settings(emulator: str) -> BillingSettings:
    return BillingSettings(
        stripe_api_key=API_KEY, stripe_api_base=emulator, stripe_webhook_secret=SECRET
    )


async def test_a_paid_checkout_session_becomes_the_plan(
    emulator: str, infra: Infra, db: AsyncConnection, factory: Factory, redis: Redis
) -> None:
    settings = stripe_settings(emulator)
    sdk = stripe.StripeClient(API_KEY, base_addresses={"api": emulator})
    admin = principal(roles=["admin"])
    assert admin.org_id
    h = auth_headers(admin)
    async with client_for(build_app(settings), connection=db) as c:
        resp = await c.post(
            "/v1/billing/checkout",
            json={"plan": "team", "success_url": "https://app.example.com/billing?paid=1"},
            headers=h,
        )
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["plan"] == "team" and body["status"] == "open"
        assert body["url"].startswith(emulator) and body["id"].startswith("cs_")
        # the session as Stripe has it, read with the SDK
        session = sdk.v1.checkout.sessions.retrieve(body["id"])
        assert isinstance(session, stripe.checkout.Session)
        assert (session.mode, session.client_reference_id) == ("subscription", str(admin.org_id))
        assert session.success_url == "https://app.example.com/billing?paid=1"
        assert session.url == body["url"] and session.amount_total == 9000

        # nothing changes before the customer pays
        before = (await c.get("/v1/billing/subscription", headers=h)).json()
        assert before["plan"] == "free"

        complete_checkout(body["url"])
        seen: set[str] = set()
        await deliver_until(emulator, c, SECRET, TYPES, seen, "checkout.session.completed")
        await process(infra, factory, settings)
        after = (await c.get("/v1/billing/subscription", headers=h)).json()
        # the shipped team plan has a 14-day trial
        assert (after["plan"], after["status"]) == ("team", "trialing")
        ent = await EntitlementsCache(redis, ttl_s=0).get(admin.org_id)
        assert ent is not None and (ent.plan, ent.limits.rpm) == ("team", 3000)
        paid = sdk.v1.checkout.sessions.retrieve(body["id"])
        assert paid.status == "complete" and paid.subscription

        # one subscription per organization: a second checkout is refused, nothing made
        again = await c.post(
            "/v1/billing/checkout",
            json={"plan": "pro", "success_url": "https://app.example.com/ok"},
            headers=h,
        )
        assert again.status_code == 409 and again.json()["error"]["code"] == "already_subscribed"

        # the portal, for the customer the checkout made
        portal = await c.post(
            "/v1/billing/portal", json={"return_url": "https://app.example.com/billing"}, headers=h
        )
        assert portal.status_code == 200, portal.text
        assert portal.json()["url"].startswith(f"{emulator}/billing_portal/bps_")
        async with httpx.AsyncClient() as browser:
            page = await browser.get(portal.json()["url"])
        assert page.status_code == 200
    await redis.delete(entitlements_key(admin.org_id))


async def test_a_card_collected_by_a_setup_intent_pays_the_subscription(
    emulator: str, db: AsyncConnection, redis: Redis
) -> None:
    sdk = stripe.StripeClient(API_KEY, base_addresses={"api": emulator})
    admin = principal(roles=["admin"])
    assert admin.org_id
    h = auth_headers(admin)
    async with client_for(build_app(stripe_settings(emulator)), connection=db) as c:
        resp = await c.post("/v1/billing/setup_intent", headers=h)
        assert resp.status_code == 201, resp.text
        intent = resp.json()
        assert intent["status"] == "requires_payment_method" and intent["client_secret"]
        # what Stripe.js' confirmCardSetup does in the browser
        pm = sdk.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2035,
                    "cvc": "123",
                },
            }
        )
        confirmed = sdk.v1.setup_intents.confirm(intent["id"], params={"payment_method": pm.id})
        assert confirmed.status == "succeeded"
        sub = await c.post(
            "/v1/billing/subscription/stripe",
            json={"plan": "pro", "payment_method": pm.id},
            headers=h,
        )
        assert sub.status_code == 200, sub.text
        assert sub.json()["plan"] == "pro" and sub.json()["status"] in ("active", "trialing")
        # the setup intent and the subscription belong to the same customer
        customer = sdk.v1.setup_intents.retrieve(intent["id"]).customer
        assert customer and sdk.v1.payment_methods.retrieve(pm.id).customer == customer
    await redis.delete(entitlements_key(admin.org_id))


async def test_mistakes_are_refused_and_nothing_is_made(emulator: str, db: AsyncConnection) -> None:
    sdk = stripe.StripeClient(API_KEY, base_addresses={"api": emulator})
    before = len(sdk.v1.checkout.sessions.list(params={"limit": 100}).data)
    admin = principal(roles=["admin"])
    member = principal(roles=["member"], scopes=["billing:read"])
    ok = "https://app.example.com/ok"
    async with client_for(build_app(stripe_settings(emulator)), connection=db) as c:
        h = auth_headers(admin)
        free = await c.post(
            "/v1/billing/checkout", json={"plan": "free", "success_url": ok}, headers=h
        )
        assert free.status_code == 422 and free.json()["error"]["code"] == "unknown_plan"
        bad_url = await c.post(
            "/v1/billing/checkout", json={"plan": "pro", "success_url": "not a url"}, headers=h
        )
        assert bad_url.status_code == 422
        extra = await c.post(
            "/v1/billing/checkout", json={"plan": "pro", "success_url": ok, "x": 1}, headers=h
        )
        assert extra.status_code == 422
        forbidden = await c.post(
            "/v1/billing/checkout",
            json={"plan": "pro", "success_url": ok},
            headers=auth_headers(member),
        )
        assert forbidden.status_code == 403
        # no Stripe customer yet: no portal
        portal = await c.post("/v1/billing/portal", headers=h)
        assert portal.status_code == 409 and portal.json()["error"]["code"] == "no_customer"
    assert len(sdk.v1.checkout.sessions.list(params={"limit": 100}).data) == before
    async with client_for(build_app(BillingSettings()), connection=db) as c:
        off = await c.post(
            "/v1/billing/checkout",
            json={"plan": "pro", "success_url": ok},
            headers=auth_headers(admin),
        )
        assert off.status_code == 404 and off.json()["error"]["code"] == "stripe_not_configured"


def sdk_fields(cls: type) -> set[str]:
    """The fields the official SDK declares for a Stripe object."""
    return {k for k in getattr(cls, "__annotations__", {}) if not k.isupper()}


async def test_the_emulator_answers_every_field_of_stripes_objects(emulator: str) -> None:
    """The emulator's Checkout and portal sessions carry every field the official SDK
    declares (``line_items`` only when expanded, as on Stripe), in their JSON as sent."""
    sdk = stripe.StripeClient(API_KEY, base_addresses={"api": emulator})
    customer = sdk.v1.customers.create(params={"email": "ada@example.com"})
    session = sdk.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": "price_pro_monthly", "quantity": 1}],
            "success_url": "https://example.com/ok",
        }
    )
    portal = sdk.v1.billing_portal.sessions.create(params={"customer": customer.id})
    async with httpx.AsyncClient(base_url=emulator, auth=(API_KEY, "")) as raw:
        sent = (await raw.get(f"/v1/checkout/sessions/{session.id}")).json()
    assert sdk_fields(stripe.checkout.Session) - {"line_items"} <= set(sent)
    assert sdk_fields(stripe.billing_portal.Session) <= set(portal.to_dict())
    assert (sent["object"], sent["mode"], sent["status"]) == (
        "checkout.session",
        "subscription",
        "open",
    )
    assert sent["total_details"] == {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
    done = complete_checkout(str(sent["url"]))
    assert done["customer_details"]["email"] == "ada@example.com"  # type: ignore[index]
    assert done["status"] == "complete" and done["url"] is None
