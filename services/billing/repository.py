"""Data access of the billing service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Date, cast, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert

from libs.orm import Repository
from libs.usage import UsageEvent
from services.billing.models import UsageEventRecord

# the ledger's columns: an event may carry fields this version of billing does not store yet
# (libs.usage grows additively, producers may be deployed first)
_LEDGER_COLUMNS = frozenset(c.name for c in UsageEventRecord.__table__.columns) - {
    "id",
    "recorded_at",
}


class UsageRepository(Repository[UsageEventRecord]):
    model = UsageEventRecord

    async def record(self, event: UsageEvent) -> bool:
        """Insert the event once; False when (request_id, kind) was already recorded."""
        values = {k: v for k, v in event.model_dump().items() if k in _LEDGER_COLUMNS}
        stmt = (
            insert(UsageEventRecord)
            .values(id=uuid.uuid4(), **values)
            .on_conflict_do_nothing(index_elements=["request_id", "kind"])
            .returning(UsageEventRecord.id)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none() is not None

    async def totals_by_day_and_model(
        self, org_id: uuid.UUID, start: datetime, end: datetime
    ) -> list[dict[str, Any]]:
        """Sums per UTC day and model for ``start <= created_at < end``."""
        u = UsageEventRecord
        day = cast(func.timezone("UTC", u.created_at), Date).label("day")
        stmt = (
            select(
                day,
                u.model,
                func.count().label("requests"),
                func.coalesce(func.sum(u.prompt_tokens), 0).label("prompt_tokens"),
                func.coalesce(func.sum(u.completion_tokens), 0).label("completion_tokens"),
                func.coalesce(func.sum(u.cost_usd), 0).label("cost_usd"),
                func.count().filter(u.status == "error").label("errors"),
                func.count().filter(u.cached.is_(True)).label("cached"),
                func.count().filter(u.status == "cancelled").label("cancelled"),
            )
            .where(u.org_id == org_id, u.created_at >= start, u.created_at < end)
            .group_by(literal_column("day"), u.model)
            .order_by(literal_column("day"), u.model)
        )
        return [dict(r._mapping) for r in await self.session.execute(stmt)]
