"""The ledger's monthly partitions: created ahead and on demand, dropped past retention.

``billing.usage_events`` is partitioned by range of ``created_at``, one partition per UTC
month, named ``usage_events_YYYY_MM`` (the migration that made the table names them the same
way). The worker creates this month's and the next ``ahead`` months' partitions at start and
daily; an event of a month without one (clock skew, a replay from long ago) gets its
partition created before it is inserted, so no event is ever refused for its date. Retention
drops whole partitions older than ``retention_months``: instant, no vacuum, and the rollups
(which keep the totals) stay.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger("aistack.billing.partitions")

PARENT = "usage_events"
_NAME = re.compile(r"^usage_events_(\d{4})_(\d{2})$")


def month_of(at: datetime) -> date:
    """The first day of ``at``'s UTC month."""
    utc = at.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def add_months(month: date, n: int) -> date:
    """``month`` (a first day) moved by ``n`` months."""
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"{PARENT}_{month.year:04d}_{month.month:02d}"


async def existing_months(session: AsyncSession) -> set[date]:
    """The months that have a partition."""
    rows = await session.execute(
        text(
            "SELECT c.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "JOIN pg_namespace n ON n.oid = p.relnamespace "
            "WHERE n.nspname = 'billing' AND p.relname = :parent"
        ),
        {"parent": PARENT},
    )
    months = set()
    for (name,) in rows:
        m = _NAME.match(name)
        if m:
            months.add(date(int(m.group(1)), int(m.group(2)), 1))
    return months


async def create_partition(session: AsyncSession, month: date) -> None:
    """Create ``month``'s partition if it does not exist (safe to race: IF NOT EXISTS, and a
    concurrent creation's error is left to the caller's retry)."""
    lo = datetime.combine(month, datetime.min.time(), UTC)
    hi = datetime.combine(add_months(month, 1), datetime.min.time(), UTC)
    # identifiers and bounds come from a date, never from input
    await session.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS billing.{partition_name(month)} "
            f"PARTITION OF billing.{PARENT} "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        )
    )


class Partitions:
    """The months known to have a partition (asked of PostgreSQL once, then kept)."""

    def __init__(self) -> None:
        self._known: set[date] | None = None

    def forget(self) -> None:
        """Ask PostgreSQL again next time (after a failed transaction, say)."""
        self._known = None

    async def ensure(self, session: AsyncSession, months: set[date]) -> None:
        """Make sure every month in ``months`` has its partition."""
        if self._known is not None and months <= self._known:
            return
        known = await self._refresh(session)
        for month in sorted(months - known):
            await create_partition(session, month)
            log.info("ledger partition %s created", partition_name(month))
            known.add(month)

    async def _refresh(self, session: AsyncSession) -> set[date]:
        self._known = await existing_months(session)
        return self._known

    async def maintain(
        self, session: AsyncSession, *, ahead: int, retention_months: int, now: datetime
    ) -> list[str]:
        """Create the coming months' partitions; drop those past retention (0: keep all).
        Returns the names of the partitions dropped."""
        this = month_of(now)
        await self.ensure(session, {add_months(this, k) for k in range(ahead + 1)})
        dropped: list[str] = []
        if retention_months <= 0:
            return dropped
        oldest_kept = add_months(this, -(retention_months - 1))
        known = await self._refresh(session)
        for month in sorted(known):
            if month < oldest_kept:
                name = partition_name(month)
                await session.execute(text(f"DROP TABLE IF EXISTS billing.{name}"))
                dropped.append(name)
                known.discard(month)
        for name in dropped:
            log.info("ledger partition %s dropped (retention %d months)", name, retention_months)
        return dropped
