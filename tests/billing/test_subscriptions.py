"""Subscribe → upgrade → cancel → resume against a Stripe emulator (localstripe), through the
official SDK; the plan's entitlements follow at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.entitlements import EntitlementsCache, entitlements_key
from libs.testing import auth_headers, client_for, principal
from services.billing.app import build_app
from services.billing.plans.catalogue import DEFAULTS
from services.billing.settings import BillingSettings
from tests.support.fakes.localstripe_server import API_KEY, card_payment_method, localstripe


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with localstripe() as url:
        yield url


async def test_subscribe_upgrade_cancel_and_resume(
    emulator: str, db: AsyncConnection, redis: Redis, tmp_path: Path
) -> None:
    # the shipped plans without their trials (the emulator leaves a trial "incomplete")
    shipped = yaml.safe_load(DEFAULTS.read_text())
    for plan in shipped["plans"]:
        plan.pop("trial_days", None)
    plans_file = tmp_path / "plans.yaml"
    plans_file.write_text(yaml.safe_dump(shipped))
    settings = BillingSettings(
        stripe_api_key=API_KEY, stripe_api_base=emulator, plans_config=str(plans_file)
    )
    admin = principal(roles=["admin"])
    assert admin.org_id
    cache = EntitlementsCache(redis, ttl_s=0)
    async with client_for(build_app(settings), connection=db) as c:
        h = auth_headers(admin)
        pm = card_payment_method(emulator)
        resp = await c.post(
            "/v1/billing/subscription/stripe", json={"plan": "pro", "payment_method": pm}, headers=h
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["plan"], body["status"]) == ("pro", "active")
        ent = await cache.get(admin.org_id)
        assert ent is not None and ent.plan == "pro" and ent.limits.rpm == 600

        up = await c.post("/v1/billing/subscription/stripe", json={"plan": "team"}, headers=h)
        assert up.status_code == 200, up.text
        assert up.json()["plan"] == "team"
        ent = await cache.get(admin.org_id)
        assert ent is not None and ent.plan == "team"

        # a paying organization's plan is Stripe's: not changed behind its back
        patch = await c.patch("/v1/billing/subscription", json={"plan": "free"}, headers=h)
        assert patch.status_code == 409 and patch.json()["error"]["code"] == "managed_by_stripe"

        cancel = await c.post("/v1/billing/subscription/cancel", headers=h)
        assert cancel.status_code == 200, cancel.text
        assert cancel.json()["cancel_at_period_end"] is True
        assert cancel.json()["plan"] == "team"  # until the period ends
        resume = await c.post("/v1/billing/subscription/resume", headers=h)
        assert resume.json()["cancel_at_period_end"] is False

        invoices = await c.get("/v1/billing/invoices", headers=h)
        assert invoices.status_code == 200, invoices.text
        first = invoices.json()["data"]
        assert first and first[-1]["currency"] == "usd" and first[-1]["amount_due"] >= 0

        # a plan not for sale, and an unknown payment method: the caller's mistakes
        free = await c.post("/v1/billing/subscription/stripe", json={"plan": "free"}, headers=h)
        assert free.status_code == 422 and free.json()["error"]["code"] == "unknown_plan"
        bad = await c.post(
            "/v1/billing/subscription/stripe",
            json={"plan": "pro", "payment_method": "pm_nope"},
            headers=h,
        )
        assert bad.status_code in (404, 422), bad.text
        assert bad.json()["error"]["code"] in ("stripe_refused", "not_found")
    await redis.delete(entitlements_key(admin.org_id))


async def test_without_stripe_subscribing_says_so(db: AsyncConnection) -> None:
    admin = principal(roles=["admin"])
    async with client_for(build_app(BillingSettings()), connection=db) as c:
        resp = await c.post(
            "/v1/billing/subscription/stripe", json={"plan": "pro"}, headers=auth_headers(admin)
        )
        listed = await c.get("/v1/billing/invoices", headers=auth_headers(admin))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "stripe_not_configured"
    assert listed.status_code == 200 and listed.json() == {"object": "list", "data": []}
