"""What the queue overview reads from job records."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from libs.orm import Repository
from services.jobs.models import Job, JobType, Schedule


class QueueRepository(Repository[Job]):
    model = Job

    async def known_queues(self) -> list[str]:
        stmt = select(JobType.queue).distinct()
        return list((await self.session.scalars(stmt)).all())

    async def status_counts(self, since: datetime) -> dict[str, dict[str, int]]:
        """Jobs created since ``since``, by queue and status (every organization)."""
        stmt = (
            select(Job.queue, Job.status, func.count())
            .where(Job.created_at >= since)
            .group_by(Job.queue, Job.status)
        )
        out: dict[str, dict[str, int]] = {}
        for queue, status, n in await self.session.execute(stmt):
            out.setdefault(queue, {})[status] = int(n)
        return out

    async def platform_schedules(self) -> list[Schedule]:
        stmt = select(Schedule).where(Schedule.org_id.is_(None)).order_by(Schedule.key)
        return list((await self.session.scalars(stmt)).all())
