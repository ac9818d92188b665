"""Overage reported to Stripe at the end of a month exactly once: only for plans that allow
and bill it, as one invoice item per organization and month; running the job again, even
after a crash between Stripe's answer and the commit, sends nothing twice."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import stripe
import yaml
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.db import session_scope
from libs.entitlements import entitlements_key
from libs.queue import enqueue_now
from libs.testing import Infra, auth_headers, client_for, principal
from libs.usage import BILLING_SERVICE
from services.billing import tasks as billing_tasks
from services.billing.app import build_app
from services.billing.models import OverageReport
from services.billing.overage.service import OverageReporter, last_finished_month
from services.billing.plans.catalogue import DEFAULTS, load_plans
from services.billing.settings import BillingSettings
from services.billing.tasks import REPORT_OVERAGE
from services.billing.usage.partitions import month_of
from services.billing.usage.repository import UsageRepository
from tests.billing.conftest import Factory, usage_event
from tests.support.fakes.localstripe_server import API_KEY, card_payment_method, localstripe
from tests.support.workers import run_burst


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with localstripe() as url:
        yield url


def plans_file(tmp_path: Path) -> Path:
    """The shipped plans without trials; team includes $1 of spend, then bills overage, and
    reports its tokens to a Stripe meter."""
    shipped = yaml.safe_load(DEFAULTS.read_text())
    for plan in shipped["plans"]:
        plan.pop("trial_days", None)
        if plan["id"] == "team":
            plan["limits"]["monthly_spend_usd"] = 1
            plan["stripe_meter"] = "aistack_tokens"
    path = tmp_path / "plans.yaml"
    path.write_text(yaml.safe_dump(shipped))
    return path


async def subscribed(c: object, emulator: str, plan: str) -> tuple[uuid.UUID, str]:
    """A new organization subscribed to ``plan`` with a card; its id and Stripe customer."""
    import httpx

    assert isinstance(c, httpx.AsyncClient)
    admin = principal(roles=["admin"])
    assert admin.org_id
    resp = await c.post(
        "/v1/billing/subscription/stripe",
        json={"plan": plan, "payment_method": card_payment_method(emulator)},
        headers=auth_headers(admin),
    )
    assert resp.status_code == 200 and resp.json()["status"] == "active", resp.text
    sdk = stripe.StripeClient(API_KEY, base_addresses={"api": emulator})
    customers = sdk.v1.customers.list(params={"limit": 100}).data
    mine = [x for x in customers if x.to_dict()["metadata"].get("org_id") == str(admin.org_id)]
    assert len(mine) == 1
    return admin.org_id, str(mine[0].id)


def pending_items(sdk: stripe.StripeClient, customer: str) -> list[stripe.InvoiceItem]:
    return list(sdk.v1.invoice_items.list(params={"customer": customer, "limit": 100}).data)


async def test_overage_is_reported_once_per_organization_and_month(
    emulator: str,
    infra: Infra,
    db: AsyncConnection,
    factory: Factory,
    redis: Redis,
    tmp_path: Path,
) -> None:
    path = plans_file(tmp_path)
    settings = BillingSettings(
        stripe_api_key=API_KEY, stripe_api_base=emulator, plans_config=str(path)
    )
    sdk = stripe.StripeClient(API_KEY, base_addresses={"api": emulator})
    async with client_for(build_app(settings), connection=db) as c:
        team_org, team_customer = await subscribed(c, emulator, "team")
        pro_org, pro_customer = await subscribed(c, emulator, "pro")
    now = datetime.now(UTC)
    month = last_finished_month(now)
    during = datetime(month.year, month.month, 2, 12, tzinfo=UTC)
    async with session_scope(factory) as s:
        repo = UsageRepository(s)
        for org, cost in ((team_org, "1.728"), (team_org, "1.728"), (pro_org, "500")):
            await repo.record(usage_event(org, cost_usd=Decimal(cost), created_at=during))
        # this month's usage is not last month's
        await repo.record(usage_event(team_org, cost_usd=Decimal("7"), created_at=now))

    meter = sdk.v1.billing.meters.create(
        params={
            "display_name": "Tokens",
            "event_name": "aistack_tokens",
            "default_aggregation": {"formula": "sum"},
        }
    )
    start = int(datetime(month.year, month.month, 1, tzinfo=UTC).timestamp())

    def metered(customer: str) -> float:
        params: Any = {"customer": customer, "start_time": start, "end_time": int(now.timestamp())}
        summaries = sdk.v1.billing.meters.event_summaries.list(meter.id, params=params).data
        return float(sum(x.aggregated_value for x in summaries))

    reporter = OverageReporter(factory, load_plans(path), sdk)
    first = await reporter.report(month)
    assert first["sent"] >= 1
    items = pending_items(sdk, team_customer)
    # $3.456 spent, $1 included: $2.456, billed as 246 cents on the subscription's invoice
    assert [(i.amount, i.currency) for i in items] == [(246, "usd")]
    assert items[0].to_dict()["metadata"] == {
        "org_id": str(team_org),
        "period": f"{month:%Y-%m}",
        "kind": "overage",
    }
    # the month's tokens (2 calls of 10 + 5) on the team plan's meter
    assert metered(team_customer) == 30
    # pro blocks past its budget: nothing is billed, whatever was spent
    assert pending_items(sdk, pro_customer) == [] and metered(pro_customer) == 0

    # run again: nothing sent twice
    again = await reporter.report(month)
    assert again["sent"] == 0 and again["already"] >= 1
    assert len(pending_items(sdk, team_customer)) == 1

    # a crash after Stripe's answer, before the commit: the row says "not reported"; the
    # next run sends the same request with the same idempotency key, and Stripe answers it
    # with the item it made then
    async with session_scope(factory) as s:
        await s.execute(
            update(OverageReport)
            .where(OverageReport.org_id == team_org)
            .values(reported_at=None, stripe_invoice_item=None, meter_reported_at=None)
        )
    retried = await reporter.report(month)
    assert retried["sent"] == 1
    assert [i.id for i in pending_items(sdk, team_customer)] == [items[0].id]
    assert metered(team_customer) == 30  # the meter event's identifier is not taken twice
    async with factory() as s:
        row = await s.get(OverageReport, (team_org, month))
        assert row is not None and row.stripe_invoice_item == items[0].id
        assert (row.tokens, row.meter_event) == (30, f"tokens:{team_org}:{month:%Y-%m}")
        assert (row.spend_usd, row.included_usd, row.amount_cents) == (
            Decimal("3.456"),
            Decimal(1),
            246,
        )

    # the month under way is not final
    with pytest.raises(ValueError, match="has not ended"):
        await reporter.report(month_of(now), now=now)

    # the billing worker's job (what the daily schedule runs) sends nothing more either
    await enqueue_now(
        redis,
        service=BILLING_SERVICE,
        function=REPORT_OVERAGE,
        kwargs={"month": f"{month:%Y-%m}"},
        internal=True,
    )
    worker = await run_burst(
        infra.redis_url,
        BILLING_SERVICE,
        billing_tasks.functions,
        ctx={"db": factory, "settings": settings},
        max_jobs=1,
    )
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert len(pending_items(sdk, team_customer)) == 1 and metered(team_customer) == 30
    for org in (team_org, pro_org):
        await redis.delete(entitlements_key(org))
