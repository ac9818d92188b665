"""Queries of the job types table (``jobs.job_types``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from libs.orm import Repository
from services.jobs.models import JobType


class JobTypeRepository(Repository[JobType]):
    model = JobType

    async def all(self) -> list[JobType]:
        stmt = select(JobType).order_by(JobType.service, JobType.name)
        return list((await self.session.scalars(stmt)).all())

    async def find(self, service: str, name: str) -> JobType | None:
        return await self.session.get(JobType, (service, name))

    async def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or update declarations (``service``, ``name``, ``queue``, ``spec``,
        ``user_startable``, ``schedulable``, ``published_at``)."""
        if not rows:
            return
        stmt = insert(JobType).values(list(rows))
        stmt = stmt.on_conflict_do_update(
            index_elements=[JobType.service, JobType.name],
            set_={
                name: stmt.excluded[name]
                for name in ("queue", "spec", "user_startable", "schedulable", "published_at")
            },
        )
        await self.session.execute(stmt)
