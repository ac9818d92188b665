"""Usage reports (from the daily rollups) and exports (from the raw ledger)."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import SessionFactory
from libs.errors import ValidationFailed
from libs.identity import Principal
from services.billing.usage.repository import EXPORT_COLUMNS, SUMS, UsageRepository
from services.billing.usage.schemas import (
    ExportFormat,
    GroupBy,
    UsageByModel,
    UsageReport,
    UsageRow,
    UsageTotals,
)

MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 30
DEFAULT_GROUPS: list[GroupBy] = ["day", "model"]
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class UsageFilters:
    key_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    model: str | None = None
    kind: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


def day_range(start: date | None, end: date | None) -> tuple[date, date]:
    """``start`` and ``end`` inclusive (default: the last 30 days), checked."""
    end = end or datetime.now(UTC).date()
    start = start or end - timedelta(days=DEFAULT_RANGE_DAYS - 1)
    if start > end:
        raise ValidationFailed("start must not be after end", code="invalid_range")
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise ValidationFailed(
            f"The range may span at most {MAX_RANGE_DAYS} days", code="range_too_large"
        )
    return start, end


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: sum(r[k] for r in rows) for k in SUMS}
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out


class UsageService:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.repo = UsageRepository(session)
        self.org_id = principal.require_org()

    async def report(
        self,
        start: date | None,
        end: date | None,
        *,
        group_by: list[GroupBy] | None = None,
        filters: UsageFilters | None = None,
    ) -> UsageReport:
        """Usage of the organization grouped as asked, ``start`` and ``end`` inclusive."""
        start, end = day_range(start, end)
        groups: list[GroupBy] = list(dict.fromkeys(group_by or DEFAULT_GROUPS))
        where = (filters or UsageFilters()).as_dict()
        rows = await self.repo.report(self.org_id, start, end, group_by=groups, filters=where)
        per_model = await self.repo.report(
            self.org_id, start, end, group_by=["model"], filters=where
        )
        data = []
        for row in rows:
            row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
            if not row["storage_bytes"]:
                row["storage_bytes"] = None
            data.append(UsageRow(**row))
        return UsageReport(
            start=start,
            end=end,
            group_by=groups,
            totals=UsageTotals(**_totals(rows)),
            by_model=[
                UsageByModel(**r, total_tokens=r["prompt_tokens"] + r["completion_tokens"])
                for r in per_model
            ],
            data=data,
        )


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _plain(value)
    if value is None:
        return ""
    return value


def _plain(value: Any) -> str:
    """Decimals in fixed point (a free call's cost is 0.00000000, not str()'s 0E-8)."""
    return format(value, "f") if isinstance(value, Decimal) else str(value)


async def export_lines(
    sessions: SessionFactory,
    org_id: uuid.UUID,
    start: date,
    end: date,
    filters: UsageFilters,
    fmt: ExportFormat,
) -> AsyncIterator[bytes]:
    """The raw events of the range, one CSV row or JSON line at a time, read through a server
    side cursor in a session of its own (the request's has ended when the body streams)."""
    lo = datetime.combine(start, time.min, UTC)
    hi = datetime.combine(end + timedelta(days=1), time.min, UTC)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if fmt == "csv":
        writer.writerow(EXPORT_COLUMNS)
    async with sessions() as session:
        rows = UsageRepository(session).stream_events(org_id, lo, hi, filters.as_dict())
        async for row in rows:
            if fmt == "jsonl":
                buffer.write(orjson.dumps(row, default=_plain).decode())
                buffer.write("\n")
            else:
                writer.writerow([_cell(row[c]) for c in EXPORT_COLUMNS])
            if buffer.tell() >= _CHUNK:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()
