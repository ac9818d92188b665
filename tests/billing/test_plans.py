"""Plans in configuration, an organization's subscription and its entitlements in Redis."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.db import session_scope
from libs.entitlements import DEFAULT_KEY, EntitlementsCache, entitlements_key
from libs.testing import auth_headers, client_for, principal
from services.billing.app import build_app
from services.billing.plans.catalogue import PlansConfigError, load_plans
from services.billing.usage.repository import UsageRepository
from tests.billing.conftest import Factory, usage_event


async def test_a_new_organization_is_on_the_free_plan_with_its_spend_against_its_limits(
    db: AsyncConnection, factory: Factory, redis: Redis
) -> None:
    admin = principal(roles=["admin"])
    assert admin.org_id
    now = datetime.now(UTC)
    async with session_scope(factory) as s:
        await UsageRepository(s).record_many(
            [
                usage_event(admin.org_id, created_at=now, cost_usd=Decimal("0.25")),
                usage_event(admin.org_id, created_at=now, cost_usd=Decimal("0.5")),
            ]
        )
    async with client_for(build_app(), connection=db) as c:
        plans = await c.get("/v1/billing/plans", headers=auth_headers(admin))
        assert plans.status_code == 200, plans.text
        body = plans.json()
        assert body["default"] == "free"
        assert [p["id"] for p in body["data"]] == ["free", "pro", "team", "enterprise"]
        # published at start for organizations billing has not seen yet
        assert await redis.get(DEFAULT_KEY) is not None

        resp = await c.get("/v1/billing/subscription", headers=auth_headers(admin))
        assert resp.status_code == 200, resp.text
        sub = resp.json()
        assert (sub["plan"], sub["status"]) == ("free", "active")
        assert sub["current_period_start"].startswith(now.strftime("%Y-%m-01"))
        usage = {u["name"]: u for u in sub["usage"]}
        assert Decimal(usage["monthly_spend_usd"]["used"]) == Decimal("0.75")
        assert Decimal(usage["monthly_spend_usd"]["limit"]) == Decimal(5)
        assert usage["monthly_tokens"]["used"] == 30 and usage["rpm"]["limit"] == 60
        cache = EntitlementsCache(redis, ttl_s=0)
        ent = await cache.get(admin.org_id)
        assert ent is not None and ent.plan == "free" and ent.limits.rpm == 60

        # an admin moves the organization to another plan and lowers its budget
        resp = await c.patch(
            "/v1/billing/subscription",
            json={"plan": "pro", "monthly_budget_usd": "20"},
            headers=auth_headers(admin),
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["entitlements"]["limits"]["monthly_spend_usd"] == "20"
        ent = await cache.get(admin.org_id)
        assert ent is not None and ent.plan == "pro" and ent.limits.rpm == 600
        assert ent.limits.monthly_spend_usd == Decimal(20)
        # a budget over the plan's does not raise it
        resp = await c.patch(
            "/v1/billing/subscription",
            json={"monthly_budget_usd": "5000"},
            headers=auth_headers(admin),
        )
        assert resp.json()["entitlements"]["limits"]["monthly_spend_usd"] == "200"

        bad = await c.patch(
            "/v1/billing/subscription", json={"plan": "gold"}, headers=auth_headers(admin)
        )
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_plan"
        member = principal(org_id=admin.org_id, roles=["member"], scopes=["billing:read"])
        denied = await c.patch(
            "/v1/billing/subscription", json={"plan": "free"}, headers=auth_headers(member)
        )
        assert denied.status_code == 403
        ent = await cache.get(admin.org_id)
        assert ent is not None and ent.plan == "pro"
    await redis.delete(entitlements_key(admin.org_id))


async def test_an_organization_billing_has_not_seen_gets_the_default_entitlements(
    redis: Redis,
) -> None:
    plans = load_plans(None)
    await redis.set(DEFAULT_KEY, plans.default.entitlements().dumps())
    ent = await EntitlementsCache(redis).get(uuid.uuid4())
    assert ent is not None and ent.plan == "free"


def test_a_plans_file_naming_an_undeclared_default_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text("default: gold\nplans:\n  - {id: free, name: Free}\n")
    with pytest.raises(PlansConfigError, match="default plan 'gold' is not declared"):
        load_plans(path)
