"""Usage reports (rollups: filters and grouping) and exports (raw events, streamed)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.db import session_scope
from libs.testing import auth_headers, client_for, principal
from services.billing.app import build_app
from services.billing.usage.repository import UsageRepository
from tests.billing.conftest import Factory, usage_event


async def test_usage_totals_filters_and_grouping(db: AsyncConnection, factory: Factory) -> None:
    alice, mallory = principal(), principal()
    assert alice.org_id and mallory.org_id
    key = uuid.uuid4()
    d1 = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    d2 = datetime(2026, 3, 2, 0, 1, tzinfo=UTC)
    events = [
        usage_event(alice.org_id, created_at=d1, cost_usd=Decimal("0.1"), key_id=key),
        usage_event(alice.org_id, created_at=d1, cost_usd=Decimal("0.2"), status="error"),
        usage_event(
            alice.org_id, created_at=d2, model="claude", provider="anthropic", cost_usd=Decimal("1")
        ),
        usage_event(alice.org_id, created_at=d2, kind="embedding", cost_usd=Decimal("0.01")),
        usage_event(alice.org_id, created_at=datetime(2026, 4, 1, tzinfo=UTC)),  # outside
        usage_event(mallory.org_id, created_at=d1, cost_usd=Decimal("5")),
    ]
    async with session_scope(factory) as s:
        await UsageRepository(s).record_many(events)

    async with client_for(build_app(), connection=db) as c:
        march = {"start": "2026-03-01", "end": "2026-03-31"}
        resp = await c.get("/v1/billing/usage", params=march, headers=auth_headers(alice))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["totals"]["requests"] == 4
        # an error is never charged; fixed point, never "1.3E+0"
        assert body["totals"]["cost_usd"] == "1.11000000"
        assert body["totals"]["prompt_tokens"] == 40 and body["totals"]["total_tokens"] == 60
        assert body["totals"]["errors"] == 1
        rows = [(r["day"], r["model"], r["requests"], Decimal(r["cost_usd"])) for r in body["data"]]
        assert rows == [
            ("2026-03-01", "unpriced-model", 2, Decimal("0.1")),
            ("2026-03-02", "claude", 1, Decimal("1")),
            ("2026-03-02", "unpriced-model", 1, Decimal("0.01")),
        ]
        assert [m["model"] for m in body["by_model"]] == ["claude", "unpriced-model"]

        by_kind = await c.get(
            "/v1/billing/usage",
            params={**march, "group_by": ["kind", "key_id"]},
            headers=auth_headers(alice),
        )
        assert by_kind.status_code == 200, by_kind.text
        got = {(r["kind"], r["key_id"], r["requests"]) for r in by_kind.json()["data"]}
        assert got == {("chat", str(key), 1), ("chat", None, 2), ("embedding", None, 1)}
        assert all(r["day"] is None for r in by_kind.json()["data"])

        one_key = await c.get(
            "/v1/billing/usage", params={**march, "key_id": str(key)}, headers=auth_headers(alice)
        )
        assert one_key.json()["totals"]["requests"] == 1
        claude = await c.get(
            "/v1/billing/usage",
            params={**march, "model": "claude", "kind": "chat"},
            headers=auth_headers(alice),
        )
        assert claude.json()["totals"]["cost_usd"] == "1.00000000"

        bad = await c.get(
            "/v1/billing/usage",
            params={"start": "2026-03-05", "end": "2026-03-01"},
            headers=auth_headers(alice),
        )
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_range"
        bad_group = await c.get(
            "/v1/billing/usage", params={"group_by": "org_id"}, headers=auth_headers(alice)
        )
        assert bad_group.status_code == 422
        no_scope = principal(org_id=alice.org_id, scopes=["jobs:read"])
        assert (await c.get("/v1/billing/usage", headers=auth_headers(no_scope))).status_code == 403


async def test_export_streams_every_event_as_csv_or_json_lines(
    db: AsyncConnection, factory: Factory
) -> None:
    alice, mallory = principal(), principal()
    assert alice.org_id and mallory.org_id
    at = datetime(2026, 2, 10, tzinfo=UTC)
    mine = [
        usage_event(alice.org_id, created_at=at.replace(minute=i), cost_usd=Decimal("0.5"))
        for i in range(30)
    ]
    async with session_scope(factory) as s:
        await UsageRepository(s).record_many([*mine, usage_event(mallory.org_id, created_at=at)])
    params = {"start": "2026-02-01", "end": "2026-02-28"}
    async with client_for(build_app(), connection=db) as c:
        resp = await c.get("/v1/billing/usage/export", params=params, headers=auth_headers(alice))
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(resp.text)))
        assert [r["request_id"] for r in rows] == [e.request_id for e in mine]
        assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(15)

        lines = await c.get(
            "/v1/billing/usage/export",
            params={**params, "format": "jsonl", "model": "unpriced-model"},
            headers=auth_headers(alice),
        )
        assert lines.status_code == 200
        parsed = [orjson.loads(line) for line in lines.text.splitlines()]
        assert len(parsed) == 30 and parsed[0]["org_id"] == str(alice.org_id)
        assert parsed[0]["created_at"].startswith("2026-02-10T00:00:00")

        # a free call (the local model) costs 0.00000000 in both formats, never 0E-8
        async with session_scope(factory) as s:
            free = usage_event(alice.org_id, created_at=at, model="free", cost_usd=Decimal(0))
            await UsageRepository(s).record_many([free])
        one = {"start": "2026-02-10", "end": "2026-02-10", "model": free.model}
        for fmt in ("csv", "jsonl"):
            got = await c.get(
                "/v1/billing/usage/export",
                params={**one, "format": fmt},
                headers=auth_headers(alice),
            )
            assert got.status_code == 200 and "0E-8" not in got.text, got.text
            assert "0.00000000" in got.text

        bad = await c.get(
            "/v1/billing/usage/export",
            params={"start": "2025-01-01", "end": "2026-12-31"},
            headers=auth_headers(alice),
        )
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "range_too_large"
