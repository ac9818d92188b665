"""Domain logic of the billing service."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from libs.errors import ValidationFailed
from libs.identity import Principal
from services.billing.repository import UsageRepository
from services.billing.schemas import UsageByDayModel, UsageByModel, UsageReport, UsageTotals

MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 30
_SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "errors",
    "cached",
    "cancelled",
)


def _add(into: dict[str, Any], row: dict[str, Any]) -> None:
    for k in _SUMS:
        into[k] = into.get(k, 0) + row[k]
    into["total_tokens"] = into.get("prompt_tokens", 0) + into.get("completion_tokens", 0)


class UsageService:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.repo = UsageRepository(session)
        self.org_id = principal.require_org()

    async def report(self, start: date | None, end: date | None) -> UsageReport:
        """Usage of the organization per UTC day and model, ``start`` and ``end`` inclusive."""
        end = end or datetime.now(UTC).date()
        start = start or end - timedelta(days=DEFAULT_RANGE_DAYS - 1)
        if start > end:
            raise ValidationFailed("start must not be after end", code="invalid_range")
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise ValidationFailed(
                f"The range may span at most {MAX_RANGE_DAYS} days", code="range_too_large"
            )
        lo = datetime.combine(start, time.min, UTC)
        hi = datetime.combine(end + timedelta(days=1), time.min, UTC)
        rows = await self.repo.totals_by_day_and_model(self.org_id, lo, hi)
        totals: dict[str, Any] = {}
        per_model: dict[str, dict[str, Any]] = {}
        data = []
        for row in rows:
            _add(totals, row)
            _add(per_model.setdefault(row["model"], {}), row)
            data.append(
                UsageByDayModel(
                    **{k: row[k] for k in (*_SUMS, "day", "model")},
                    total_tokens=row["prompt_tokens"] + row["completion_tokens"],
                )
            )
        return UsageReport(
            start=start,
            end=end,
            totals=UsageTotals(**totals),
            by_model=[UsageByModel(model=m, **v) for m, v in sorted(per_model.items())],
            data=data,
        )
