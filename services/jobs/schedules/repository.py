"""Queries of schedules (``jobs.schedules``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from libs.orm import Repository
from services.jobs.models import Job, Schedule


class ScheduleRepository(Repository[Schedule]):
    model = Schedule

    async def get_for_org(self, org_id: uuid.UUID, schedule_id: uuid.UUID) -> Schedule | None:
        stmt = select(Schedule).where(Schedule.id == schedule_id, Schedule.org_id == org_id)
        return (await self.session.scalars(stmt)).one_or_none()

    async def page(self, org_id: uuid.UUID, *, limit: int, offset: int) -> list[Schedule]:
        return await self.list(
            Schedule.org_id == org_id,
            order_by=(Schedule.created_at.desc(), Schedule.id),
            limit=limit,
            offset=offset,
        )

    async def count_for_org(self, org_id: uuid.UUID) -> int:
        stmt = select(func.count()).where(Schedule.org_id == org_id)
        return int((await self.session.scalar(stmt)) or 0)

    async def due(self, now: datetime, limit: int) -> list[Schedule]:
        """Schedules whose next tick has come, locked for this transaction; a schedule another
        scheduler holds is passed over (it fires it)."""
        stmt = (
            select(Schedule)
            .where(~Schedule.paused, Schedule.next_run_at <= now)
            .order_by(Schedule.next_run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list((await self.session.scalars(stmt)).all())

    async def runs(
        self, schedule_id: uuid.UUID, org_id: uuid.UUID, *, limit: int, offset: int
    ) -> list[Job]:
        stmt = (
            select(Job)
            .where(Job.schedule_id == schedule_id, Job.org_id == org_id)
            .order_by(Job.created_at.desc(), Job.id)
            .limit(limit)
            .offset(offset)
        )
        return list((await self.session.scalars(stmt)).all())

    async def by_keys(self, keys: Sequence[str]) -> dict[str, Schedule]:
        if not keys:
            return {}
        stmt = select(Schedule).where(Schedule.key.in_(list(keys)))
        return {s.key: s for s in (await self.session.scalars(stmt)).all() if s.key}

    async def insert_code_schedules(self, rows: Sequence[dict[str, Any]]) -> None:
        """Schedules declared in code, added once (by key)."""
        if rows:
            stmt = (
                insert(Schedule)
                .values(list(rows))
                .on_conflict_do_nothing(index_elements=[Schedule.key])
            )
            await self.session.execute(stmt)
