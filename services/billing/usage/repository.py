"""Data access of the usage ledger: batched idempotent inserts with their rollups, reports
from the rollups, exports streamed from the raw events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import func, select, text

from libs.orm import Repository
from libs.prices import PriceCatalogue
from libs.usage import UsageEvent
from services.billing.models import NO_ID, UsageEventRecord, UsageRollup
from services.billing.usage.partitions import Partitions, month_of

# one statement per batch: the events not yet in the ledger are inserted (a duplicate, in the
# batch or from before, is skipped by the unique key) and only those are added to the rollups,
# in the same transaction, so a replay never counts twice
_RECORD = text(
    """
WITH incoming AS (
  SELECT * FROM jsonb_to_recordset(CAST(:events AS jsonb)) AS x(
    request_id text, kind text, org_id uuid, user_id uuid, key_id uuid, model text,
    provider text, prompt_tokens int, completion_tokens int, cost_usd numeric, latency_ms int,
    ttft_ms int, cached bool, status text, created_at timestamptz, prompt_version_id text,
    cached_tokens int, batch bool, storage_bytes bigint, price_ref text)
), inserted AS (
  INSERT INTO billing.usage_events (
    request_id, kind, org_id, user_id, key_id, model, provider, prompt_tokens,
    completion_tokens, cost_usd, latency_ms, ttft_ms, cached, status, created_at,
    prompt_version_id, cached_tokens, batch, storage_bytes, price_ref)
  SELECT request_id, kind, org_id, user_id, key_id, model, provider, prompt_tokens,
    completion_tokens, cost_usd, latency_ms, ttft_ms, cached, status, created_at,
    prompt_version_id, cached_tokens, batch, storage_bytes, price_ref FROM incoming
  ON CONFLICT (request_id, kind, created_at) DO NOTHING
  RETURNING *
), rolled AS (
  INSERT INTO billing.usage_rollups AS r
  SELECT org_id, (created_at AT TIME ZONE 'UTC')::date, kind, model, provider,
         coalesce(key_id, CAST(:no_id AS uuid)), coalesce(user_id, CAST(:no_id AS uuid)),
         count(*), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
         sum(cost_usd), count(*) FILTER (WHERE status = 'error'), count(*) FILTER (WHERE cached),
         count(*) FILTER (WHERE status = 'cancelled'), count(*) FILTER (WHERE batch),
         coalesce(max(storage_bytes), 0)
    FROM inserted GROUP BY 1, 2, 3, 4, 5, 6, 7
  ON CONFLICT (org_id, day, kind, model, provider, key_id, user_id) DO UPDATE SET
    requests = r.requests + excluded.requests,
    prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = r.completion_tokens + excluded.completion_tokens,
    cached_tokens = r.cached_tokens + excluded.cached_tokens,
    cost_usd = r.cost_usd + excluded.cost_usd,
    errors = r.errors + excluded.errors,
    cached = r.cached + excluded.cached,
    cancelled = r.cancelled + excluded.cancelled,
    batch = r.batch + excluded.batch,
    storage_bytes = greatest(r.storage_bytes, excluded.storage_bytes)
  RETURNING 1
)
SELECT request_id, kind FROM inserted
"""
)

# what a report may group by and filter on (the rollups' columns)
GROUPS = ("day", "model", "kind", "provider", "key_id", "user_id")
SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "errors",
    "cached",
    "cancelled",
    "batch",
)
EXPORT_COLUMNS = (
    "request_id",
    "kind",
    "created_at",
    "org_id",
    "user_id",
    "key_id",
    "model",
    "provider",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "price_ref",
    "batch",
    "cached",
    "status",
    "latency_ms",
    "storage_bytes",
)


_ROW_FIELDS = (
    "request_id",
    "kind",
    "org_id",
    "user_id",
    "key_id",
    "model",
    "provider",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
    "cached",
    "status",
    "created_at",
    "prompt_version_id",
    "cached_tokens",
    "batch",
    "storage_bytes",
)


def priced_row(event: UsageEvent, prices: PriceCatalogue | None) -> dict[str, Any]:
    """The ledger row of ``event``: its cost from the price in effect at its time (the
    producer's own figure, ``price_ref`` "producer", for a model the catalogue lacks)."""
    row: dict[str, Any] = {name: getattr(event, name) for name in _ROW_FIELDS}
    row["cost_usd"] = str(event.cost_usd)
    price = prices.price_at(event.provider, event.model, event.created_at) if prices else None
    if event.status == "error":
        row["cost_usd"], row["price_ref"] = "0", price.ref if price else None
    elif event.kind == "storage":
        row["price_ref"] = None
    elif price is not None:
        cost = price.cost(
            event.prompt_tokens, event.completion_tokens, event.cached_tokens, event.batch
        )
        row["cost_usd"], row["price_ref"] = str(cost), price.ref
    else:
        row["price_ref"] = "producer"
    return row


class UsageRepository(Repository[UsageEventRecord]):
    model = UsageEventRecord

    async def record_many(
        self,
        events: Sequence[UsageEvent],
        *,
        prices: PriceCatalogue | None = None,
        partitions: Partitions | None = None,
    ) -> set[tuple[str, str]]:
        """Insert the events the ledger does not hold yet, with their rollups, in one
        statement; return the (request_id, kind) of those inserted."""
        if not events:
            return set()
        rows = [priced_row(e, prices) for e in events]
        return await self.insert_rows(rows, {month_of(e.created_at) for e in events}, partitions)

    async def insert_rows(
        self,
        rows: list[dict[str, Any]],
        months: set[date],
        partitions: Partitions | None = None,
    ) -> set[tuple[str, str]]:
        """Insert priced rows (:func:`priced_row`) of ``months``, with their rollups."""
        await (partitions or Partitions()).ensure(self.session, months)
        result = await self.session.execute(
            _RECORD, {"events": orjson.dumps(rows).decode(), "no_id": str(NO_ID)}
        )
        return {(r[0], r[1]) for r in result}

    async def record(self, event: UsageEvent, prices: PriceCatalogue | None = None) -> bool:
        """Insert one event once; False when it was already recorded."""
        return bool(await self.record_many([event], prices=prices))

    async def report(
        self,
        org_id: uuid.UUID,
        start: date,
        end: date,
        *,
        group_by: Sequence[str],
        filters: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Sums from the rollups for ``start <= day <= end``, grouped by ``group_by``."""
        r = UsageRollup
        groups = [getattr(r, g) for g in group_by]
        stmt = select(
            *groups,
            *(func.coalesce(func.sum(getattr(r, s)), 0).label(s) for s in SUMS),
            func.coalesce(func.max(r.storage_bytes), 0).label("storage_bytes"),
        ).where(r.org_id == org_id, r.day >= start, r.day <= end)
        for name, value in filters.items():
            stmt = stmt.where(getattr(r, name) == value)
        if groups:
            stmt = stmt.group_by(*groups).order_by(*groups)
        rows = [dict(row._mapping) for row in await self.session.execute(stmt)]
        for row in rows:
            for col in ("key_id", "user_id"):
                if row.get(col) == NO_ID:
                    row[col] = None
        return rows if groups or rows[0]["requests"] else []

    async def spend(self, org_id: uuid.UUID, start: date, end: date) -> tuple[Decimal, int]:
        """The organization's cost and tokens for ``start <= day <= end``."""
        r = UsageRollup
        row = (
            await self.session.execute(
                select(
                    func.coalesce(func.sum(r.cost_usd), 0),
                    func.coalesce(func.sum(r.prompt_tokens + r.completion_tokens), 0),
                ).where(r.org_id == org_id, r.day >= start, r.day <= end)
            )
        ).one()
        return Decimal(row[0]), int(row[1])

    async def latest_storage(self, org_id: uuid.UUID) -> int | None:
        """Bytes kept at the organization's latest storage sample (None: never sampled)."""
        r = UsageRollup
        last = (
            select(func.max(r.day)).where(r.org_id == org_id, r.kind == "storage").scalar_subquery()
        )
        value = await self.session.scalar(
            select(func.sum(r.storage_bytes)).where(
                r.org_id == org_id, r.kind == "storage", r.day == last
            )
        )
        return None if value is None else int(value)

    async def stream_events(
        self, org_id: uuid.UUID, lo: datetime, hi: datetime, filters: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """The raw events of ``lo <= created_at < hi`` in time order, read through a server
        side cursor (a few hundred rows in memory at a time)."""
        u = UsageEventRecord
        stmt = select(*(getattr(u, c) for c in EXPORT_COLUMNS)).where(
            u.org_id == org_id, u.created_at >= lo, u.created_at < hi
        )
        for name, value in filters.items():
            stmt = stmt.where(getattr(u, name) == value)
        stmt = stmt.order_by(u.created_at, u.request_id).execution_options(yield_per=500)
        result = await self.session.stream(stmt)
        async for row in result:
            yield dict(row._mapping)
