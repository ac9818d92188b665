"""Data access of the jobs service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, case, delete, func, literal, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert

from libs.db import Repository
from libs.queue import TERMINAL_STATUSES, JobEvent, queue_name
from libs.usage import BILLING_SERVICE, RECORD_USAGE
from services.jobs.models import Job

_RANK = {"queued": 0, "running": 1}
# internal before producers flagged them (events of a producer not yet upgraded)
UNFLAGGED_INTERNAL = frozenset({(BILLING_SERVICE, RECORD_USAGE)})


def is_internal(ev: JobEvent) -> bool:
    """Platform bookkeeping rather than work a user asked for (kept out of users' lists)."""
    return ev.internal or (ev.service, ev.function) in UNFLAGGED_INTERNAL


def status_rank(status: str) -> int:
    """queued < running < any terminal state; a status never moves back within one attempt."""
    return _RANK.get(status, 2)


def _uuid(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class JobRepository(Repository[Job]):
    model = Job

    async def get_for_org(self, org_id: uuid.UUID, job_id: str) -> Job | None:
        stmt = select(Job).where(Job.id == job_id, Job.org_id == org_id)
        return (await self.session.scalars(stmt)).one_or_none()

    async def page(
        self,
        org_id: uuid.UUID,
        *,
        status: str | None,
        service: str | None,
        limit: int,
        offset: int,
        include_internal: bool = False,
    ) -> list[Job]:
        where: list[Any] = [Job.org_id == org_id]
        if not include_internal:
            where.append(~Job.internal)  # as the partial index says it: NOT internal
        if status:
            where.append(Job.status == status)
        if service:
            where.append(Job.service == service)
        return await self.list(
            *where, order_by=(Job.created_at.desc(), Job.id), limit=limit, offset=offset
        )

    async def apply_event(self, ev: JobEvent) -> None:
        """Fold one lifecycle event into the job's row; idempotent and order-independent.

        The status only moves forward in ``(attempt, rank)`` order, so a late ``running``
        never overwrites ``succeeded``; progress and message follow the newest event of the
        current attempt and state; fields only ``queued`` carries (args) fill in whenever it
        arrives.
        """
        row_status = "running" if ev.status == "progress" else ev.status
        rank = status_rank(row_status)
        terminal = row_status in TERMINAL_STATUSES
        progress = (
            ev.progress if ev.progress is not None else (100 if ev.status == "succeeded" else None)
        )
        started = ev.ts if row_status == "running" else None
        finished = ev.ts if terminal else None
        values = {
            "id": ev.job_id,
            "service": ev.service,
            "function": ev.function,
            "queue": ev.queue or queue_name(ev.service),
            "org_id": _uuid(ev.org_id),
            "user_id": _uuid(ev.user_id),
            "status": row_status,
            "progress": progress or 0,
            "message": ev.message,
            "error": ev.error,
            "args": ev.args,
            "kwargs": ev.kwargs,
            "attempts": ev.attempt,
            "request_id": ev.request_id,
            "trace_id": ev.trace_id,
            "retry_of": ev.retry_of,
            "internal": is_internal(ev),
            "created_at": ev.ts,
            "started_at": started,
            "finished_at": finished,
            "last_event_at": ev.ts,
        }
        stmt = insert(Job).values(**values)
        x = stmt.excluded
        old_rank = case((Job.status == "queued", 0), (Job.status == "running", 1), else_=2)
        new_rank = literal(rank, Integer)
        advance = tuple_(x.attempts, new_rank) > tuple_(Job.attempts, old_rank)
        same_state = and_(x.attempts == Job.attempts, new_rank == old_rank)
        newer = or_(advance, and_(same_state, x.last_event_at >= Job.last_event_at))
        set_: dict[str, Any] = {
            "status": case((advance, x.status), else_=Job.status),
            "attempts": func.greatest(Job.attempts, x.attempts),
            "error": case((advance, x.error), else_=Job.error),
            "finished_at": case((advance, x.finished_at), else_=Job.finished_at),
            "started_at": case(
                (and_(advance, x.started_at.is_not(None)), x.started_at),
                # LEAST ignores NULLs: the earliest start seen for this attempt
                (x.attempts == Job.attempts, func.least(Job.started_at, x.started_at)),
                else_=Job.started_at,
            ),
            "last_event_at": func.greatest(Job.last_event_at, x.last_event_at),
            "created_at": func.least(Job.created_at, x.created_at),
            # any event saying so makes it internal (they all do, from a flagged producer)
            "internal": or_(Job.internal, x.internal),
            "updated_at": func.now(),
        }
        if progress is not None:
            set_["progress"] = case((newer, x.progress), else_=Job.progress)
        if ev.message is not None:
            set_["message"] = case((newer, x.message), else_=Job.message)
        for name in ("args", "kwargs", "org_id", "user_id", "request_id", "trace_id", "retry_of"):
            col = getattr(Job, name)
            set_[name] = func.coalesce(col, getattr(x, name))
        await self.session.execute(stmt.on_conflict_do_update(index_elements=[Job.id], set_=set_))

    async def purge_batch(self, org_id: uuid.UUID, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` finished jobs of ``org_id`` that finished before ``before``."""
        ids = (
            select(Job.id)
            .where(
                Job.org_id == org_id,
                Job.status.in_(sorted(TERMINAL_STATUSES)),
                Job.finished_at < before,
            )
            .limit(limit)
            .scalar_subquery()
        )
        result = await self.session.execute(delete(Job).where(Job.id.in_(ids)))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def count_purgeable(self, org_id: uuid.UUID, before: datetime) -> int:
        stmt = select(func.count()).where(
            Job.org_id == org_id,
            Job.status.in_(sorted(TERMINAL_STATUSES)),
            Job.finished_at < before,
        )
        return int((await self.session.scalar(stmt)) or 0)
