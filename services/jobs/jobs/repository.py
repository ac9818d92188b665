"""Data access of the jobs service."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any, cast

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal_column,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert

from libs.orm import Repository
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
        retried: bool | None = None,
        parent_id: str | None = None,
    ) -> list[Job]:
        where: list[Any] = [Job.org_id == org_id]
        if not include_internal:
            where.append(~Job.internal)  # as the partial index says it: NOT internal
        if status:
            where.append(Job.status == status)
        if service:
            where.append(Job.service == service)
        if retried is not None:
            where.append(Job.retried_as.is_not(None) if retried else Job.retried_as.is_(None))
        if parent_id is not None:
            where.append(Job.parent_id == parent_id)
        return await self.list(
            *where, order_by=(Job.created_at.desc(), Job.id), limit=limit, offset=offset
        )

    async def retryable(
        self,
        org_id: uuid.UUID,
        *,
        status: str,
        ids: Sequence[str] | None,
        service: str | None,
        function: str | None,
        limit: int,
    ) -> list[Job]:
        """The organization's jobs in ``status`` not retried yet, oldest first, locked (two
        bulk retries at once retry each job once)."""
        where: list[Any] = [
            Job.org_id == org_id,
            Job.status == status,
            Job.retried_as.is_(None),
            ~Job.internal,
        ]
        if ids is not None:
            where.append(Job.id.in_(list(ids)))
        if service:
            where.append(Job.service == service)
        if function:
            where.append(Job.function == function)
        stmt = (
            select(Job)
            .where(*where)
            .order_by(Job.finished_at, Job.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list((await self.session.scalars(stmt)).all())

    async def children_summary(self, parent_id: str) -> dict[str, Any] | None:
        """A parent's children: how many in each status, their mean progress."""
        stmt = (
            select(Job.status, func.count(), func.coalesce(func.sum(Job.progress), 0))
            .where(Job.parent_id == parent_id)
            .group_by(Job.status)
        )
        rows = (await self.session.execute(stmt)).all()
        if not rows:
            return None
        counts = {status: int(n) for status, n, _ in rows}
        total = sum(counts.values())
        progress = sum(int(p) for _, _, p in rows) / total
        return {"total": total, "by_status": counts, "progress": round(progress, 1)}

    async def children_states(self, parent_id: str, limit: int) -> dict[str, tuple[str, int]]:
        """A parent's children: id → (status, progress), up to ``limit`` of them."""
        stmt = (
            select(Job.id, Job.status, Job.progress).where(Job.parent_id == parent_id).limit(limit)
        )
        return {
            jid: (status, progress) for jid, status, progress in await self.session.execute(stmt)
        }

    async def apply_event(self, ev: JobEvent) -> None:
        """Fold one lifecycle event into the job's row; idempotent and order-independent.

        The status only moves forward in ``(attempt, rank)`` order, so a late ``running``
        never overwrites ``succeeded``; progress and message follow the newest event of the
        current attempt and state; fields only ``queued`` carries (args) fill in whenever it
        arrives.
        """
        await self.apply_events([ev])

    async def apply_events(self, events: Sequence[JobEvent]) -> int:
        """Fold events into their jobs' rows: the same rows as :meth:`apply_event` on each, in
        order, in one round trip (one upsert statement, executed once per row).

        A job's consecutive events become one row where that is exact (see
        :func:`plan_upserts`). Rows go in job id order, so concurrent consumers lock rows in
        the same order. Returns the number of rows upserted.
        """
        rows = plan_upserts(events)
        if rows:
            await self.session.execute(_UPSERT, rows)
        return len(rows)

    async def record_queued(self, ev: JobEvent, *, schedule_id: uuid.UUID | None = None) -> None:
        """The row of a job about to be enqueued (written before it is: the jobs service's
        records are the source of truth the reconciler enqueues lost jobs from)."""
        step = _step(ev)
        step.values["schedule_id"] = schedule_id
        await self.session.execute(_UPSERT, [step.values])

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

    async def purge_expired(
        self, status: str | None, before: datetime, limit: int, *, internal: bool = False
    ) -> int:
        """Delete up to ``limit`` finished records (of ``status``, or internal ones of any
        status) that finished before ``before``; how many."""
        where: list[Any] = [Job.finished_at < before, Job.finished_at.is_not(None)]
        if internal:
            where.append(Job.internal)
        else:
            where += [Job.status == status, ~Job.internal]
        ids = select(Job.id).where(*where).limit(limit).scalar_subquery()
        result = await self.session.execute(delete(Job).where(Job.id.in_(ids)))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def count_purgeable(self, org_id: uuid.UUID, before: datetime) -> int:
        stmt = select(func.count()).where(
            Job.org_id == org_id,
            Job.status.in_(sorted(TERMINAL_STATUSES)),
            Job.finished_at < before,
        )
        return int((await self.session.scalar(stmt)) or 0)


_COALESCED = (
    "args",
    "kwargs",
    "org_id",
    "user_id",
    "request_id",
    "trace_id",
    "retry_of",
    "parent_id",
    "priority",
    "traceparent",
    "schedule_id",
)
# what the status's winner brings (the newest attempt's state: its error, its wait)
_WITH_STATUS = ("status", "error", "finished_at", "traceback", "run_at")


@dataclass(slots=True)
class _Step:
    """One event as the upsert sees it: its row's parameters, and what orders it."""

    values: dict[str, Any]
    attempt: int
    rank: int
    ts: datetime


def _step(ev: JobEvent) -> _Step:
    row_status = "running" if ev.status == "progress" else ev.status
    terminal = row_status in TERMINAL_STATUSES
    values = {
        "id": ev.job_id,
        "service": ev.service,
        "function": ev.function,
        "queue": ev.queue or queue_name(ev.service),
        "org_id": _uuid(ev.org_id),
        "user_id": _uuid(ev.user_id),
        "status": row_status,
        # None leaves the row's progress alone (an insert writes 0)
        "progress": (
            ev.progress if ev.progress is not None else (100 if ev.status == "succeeded" else None)
        ),
        # None leaves the row's message alone
        "message": ev.message,
        "error": ev.error,
        "args": ev.args,
        "kwargs": ev.kwargs,
        "attempts": ev.attempt,
        "request_id": ev.request_id,
        "trace_id": ev.trace_id,
        "retry_of": ev.retry_of,
        "internal": is_internal(ev),
        "traceback": ev.traceback,
        "worker": ev.worker,
        "parent_id": ev.parent_id,
        "priority": ev.priority,
        "run_at": ev.run_at,
        "max_tries": ev.max_tries,
        "traceparent": ev.traceparent,
        "schedule_id": None,
        "created_at": ev.ts,
        "started_at": ev.ts if row_status == "running" else None,
        "finished_at": ev.ts if terminal else None,
        "last_event_at": ev.ts,
    }
    return _Step(values, ev.attempt, status_rank(row_status), ev.ts)


def _mergeable(steps: Sequence[_Step]) -> bool:
    """Whether :func:`_merge` of ``steps`` is exactly applying them one by one, whatever the row.

    It is when they belong to one attempt, their ranks never go back, and the last event
    setting progress (and the last setting the message: then the same event) outranks every
    event before it, has the run's top rank and its newest ``ts``: applied one by one, that
    event then wins progress/message exactly when the merged row does (a row already at that
    state and newer keeps its own). Otherwise an earlier event's value could win against some
    rows and not others, which one merged row cannot express.
    """
    return _in_order(steps) and _newest_settles(steps)


def _in_order(steps: Sequence[_Step]) -> bool:
    return all(s.attempt == steps[0].attempt and s.rank >= p.rank for p, s in pairwise(steps))


def _newest_settles(steps: Sequence[_Step]) -> bool:
    top = steps[-1].rank
    newest = max(s.ts for s in steps)
    for name in ("progress", "message"):
        last = max((i for i, s in enumerate(steps) if s.values[name] is not None), default=None)
        if last is None:
            continue
        s = steps[last]
        if s.rank != top or s.ts != newest or any(p.rank >= s.rank for p in steps[:last]):
            return False
    return True


def _runs(steps: list[_Step]) -> list[list[_Step]]:
    """One job's steps cut into runs to merge: from each start, the longest mergeable one."""
    out: list[list[_Step]] = []
    i = 0
    while i < len(steps):
        end = j = i + 1
        # _in_order holds for a prefix of what follows; _newest_settles may come and go
        while j < len(steps) and _in_order(steps[j - 1 : j + 1]):
            j += 1
            if _newest_settles(steps[i:j]):
                end = j
        out.append(steps[i:end])
        i = end
    return out


def _merge(steps: Sequence[_Step]) -> dict[str, Any]:
    """One upsert row equal to applying ``steps`` in order (given :func:`_mergeable`)."""
    first = steps[0]
    if len(steps) == 1:
        return first.values
    top = steps[-1].rank
    # the status moves only on a strictly higher (attempt, rank): the first to reach the top
    winner = next(s for s in steps if s.rank == top)
    values = dict(first.values)  # service, function, queue: only an insert writes them
    for name in _WITH_STATUS:
        values[name] = winner.values[name]
    values["created_at"] = min(s.ts for s in steps)
    values["last_event_at"] = max(s.ts for s in steps)
    # the earliest start of the attempt (see the started_at rule of _UPSERT)
    starts = [s.values["started_at"] for s in steps if s.values["started_at"] is not None]
    values["started_at"] = min(starts) if starts else None
    values["internal"] = any(s.values["internal"] for s in steps)
    for name in (*_COALESCED, "progress", "message", "worker", "max_tries"):
        found = [s.values[name] for s in steps if s.values[name] is not None]
        # first one wins a COALESCE; the last one set is the newest progress/message
        values[name] = (found[0] if name in _COALESCED else found[-1]) if found else None
    return values


def plan_upserts(events: Sequence[JobEvent]) -> list[dict[str, Any]]:
    """The upsert rows of a batch: per job (in id order), its events in batch order, merged
    into the longest runs :func:`_mergeable` allows (a usage job's queued, running, succeeded
    become one row)."""
    by_job: dict[str, list[_Step]] = {}
    for ev in events:
        by_job.setdefault(ev.job_id, []).append(_step(ev))
    return [_merge(run) for job_id in sorted(by_job) for run in _runs(by_job[job_id])]


def _build_upsert() -> Any:
    """``INSERT .. ON CONFLICT DO UPDATE`` folding one row (an event, or a merged run of a
    job's events, see :func:`_step`) into the job's row; every rule reads the row's own
    values (``excluded``). Built once, with parameters only, so SQLAlchemy compiles it once
    and a batch runs it as one executemany."""
    table = cast(Table, Job.__table__)
    c = table.c
    params: dict[str, Any] = {name: bindparam(name, type_=c[name].type) for name in _PARAMS}
    progress = params["progress"]
    stmt = insert(table).values({**params, "progress": func.coalesce(progress, 0)})
    x = stmt.excluded
    old_rank = case((c.status == "queued", 0), (c.status == "running", 1), else_=2)
    new_rank = case((x.status == "queued", 0), (x.status == "running", 1), else_=2)
    advance = tuple_(x.attempts, new_rank) > tuple_(c.attempts, old_rank)
    same_state = and_(x.attempts == c.attempts, new_rank == old_rank)
    newer = or_(advance, and_(same_state, x.last_event_at >= c.last_event_at))
    # a start moves the row on when (attempt, running) is ahead of it: for one event that is
    # "advance" (only running/progress carry started_at); for a merged run (queued, running,
    # succeeded) it keeps an earlier start of the same attempt, as applying them one by one does
    starts_ahead = tuple_(x.attempts, literal_column("1")) > tuple_(c.attempts, old_rank)
    set_: dict[str, Any] = {
        "status": case((advance, x.status), else_=c.status),
        "attempts": func.greatest(c.attempts, x.attempts),
        "error": case((advance, x.error), else_=c.error),
        "traceback": case((advance, x.traceback), else_=c.traceback),
        "run_at": case((advance, x.run_at), else_=c.run_at),
        "finished_at": case((advance, x.finished_at), else_=c.finished_at),
        # the worker of the newest attempt that named one
        "worker": case((advance, func.coalesce(x.worker, c.worker)), else_=c.worker),
        "max_tries": func.coalesce(x.max_tries, c.max_tries),
        "started_at": case(
            (and_(starts_ahead, x.started_at.is_not(None)), x.started_at),
            # LEAST ignores NULLs: the earliest start seen for this attempt
            (x.attempts == c.attempts, func.least(c.started_at, x.started_at)),
            else_=c.started_at,
        ),
        "last_event_at": func.greatest(c.last_event_at, x.last_event_at),
        "created_at": func.least(c.created_at, x.created_at),
        # any event saying so makes it internal (they all do, from a flagged producer)
        "internal": or_(c.internal, x.internal),
        # progress and message follow the newest event that carries one
        "progress": case((and_(newer, progress.is_not(None)), x.progress), else_=c.progress),
        "message": case((and_(newer, x.message.is_not(None)), x.message), else_=c.message),
        "updated_at": func.now(),
    }
    for name in _COALESCED:
        set_[name] = func.coalesce(c[name], x[name])
    return stmt.on_conflict_do_update(index_elements=[c.id], set_=set_)


_PARAMS = tuple(_step(JobEvent(job_id="", service="", function="", status="queued")).values)
_UPSERT = _build_upsert()
