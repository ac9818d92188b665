"""Schedules: an organization's periodic jobs (through the API) and the platform's (declared in
code by the workers, :class:`libs.queue.types.Periodic`)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.errors import Conflict, NotFound, ValidationFailed
from libs.identity import Principal
from libs.queue.names import SCHEDULES_KEY
from services.jobs.models import Job, Schedule
from services.jobs.schedules import cron
from services.jobs.schedules.repository import ScheduleRepository
from services.jobs.schedules.schemas import ScheduleCreate, ScheduleUpdate
from services.jobs.types.service import JobTypeService, validate_arguments

log = logging.getLogger("aistack.jobs.schedules")


def _invalid(exc: cron.InvalidCron) -> ValidationFailed:
    return ValidationFailed(
        str(exc),
        details=[{"field": f"body.{exc.field}", "message": str(exc), "type": "value_error"}],
    )


def schedule_out(s: Schedule) -> dict[str, Any]:
    """A schedule as the API shows it, with its next five ticks."""
    upcoming: list[datetime] = []
    if not s.paused and s.next_run_at is not None:
        upcoming = [s.next_run_at, *cron.next_after(s.cron, s.timezone, s.next_run_at, 4)]
    return {
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "type": f"{s.service}.{s.function}",
        "arguments": s.kwargs or {},
        "cron": s.cron,
        "timezone": s.timezone,
        "missed": s.missed,
        "priority": s.priority,
        "paused": s.paused,
        "next_run_at": None if s.paused else s.next_run_at,
        "next_runs": upcoming,
        "last_run_at": s.last_run_at,
        "last_job_id": s.last_job_id,
        "runs": s.runs,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


class ScheduleService:
    def __init__(
        self, session: AsyncSession, principal: Principal, *, max_per_org: int = 100
    ) -> None:
        self.session = session
        self.repo = ScheduleRepository(session)
        self.types = JobTypeService(session, principal)
        self.principal = principal
        self.org_id = principal.require_org()
        self.max_per_org = max_per_org

    async def get(self, schedule_id: uuid.UUID) -> Schedule:
        s = await self.repo.get_for_org(self.org_id, schedule_id)
        if s is None:
            # another organization's schedule looks exactly like an unknown one
            raise NotFound("Schedule not found", code="schedule_not_found")
        return s

    async def page(self, *, limit: int, offset: int) -> tuple[list[Schedule], bool]:
        rows = await self.repo.page(self.org_id, limit=limit + 1, offset=offset)
        return rows[:limit], len(rows) > limit

    async def create(self, body: ScheduleCreate) -> Schedule:
        row = await self.types.startable(body.type, scheduling=True)
        validate_arguments(row, body.arguments)
        try:
            expr = cron.check(body.cron, body.timezone)
        except cron.InvalidCron as exc:
            raise _invalid(exc) from exc
        if await self.repo.count_for_org(self.org_id) >= self.max_per_org:
            raise Conflict(
                f"An organization has at most {self.max_per_org} schedules",
                code="schedule_limit_reached",
            )
        now = datetime.now(UTC)
        (first,) = cron.next_after(expr, body.timezone, now)
        s = Schedule(
            org_id=self.org_id,
            name=body.name,
            description=body.description,
            service=row.service,
            function=row.name,
            kwargs=body.arguments,
            cron=expr,
            timezone=body.timezone,
            missed=body.missed,
            priority=body.priority,
            paused=body.paused,
            next_run_at=first,
            created_by=self.principal.user_id,
        )
        await self.repo.add(s)
        await self.session.refresh(s)
        return s

    async def update(self, schedule_id: uuid.UUID, body: ScheduleUpdate) -> Schedule:
        s = await self.get(schedule_id)
        fields = body.model_fields_set
        if "arguments" in fields and body.arguments is not None:
            row = await self.types.startable(f"{s.service}.{s.function}", scheduling=True)
            validate_arguments(row, body.arguments)
            s.kwargs = body.arguments
        if fields & {"cron", "timezone"}:
            expr, tz = body.cron or s.cron, body.timezone or s.timezone
            try:
                s.cron = cron.check(expr, tz)
            except cron.InvalidCron as exc:
                raise _invalid(exc) from exc
            s.timezone = tz
            (s.next_run_at,) = cron.next_after(s.cron, tz, datetime.now(UTC))
        for name in ("name", "description", "missed", "priority"):
            if name in fields and (getattr(body, name) is not None or name != "name"):
                setattr(s, name, getattr(body, name))
        return await self._saved(s)

    async def pause(self, schedule_id: uuid.UUID) -> Schedule:
        s = await self.get(schedule_id)
        s.paused = True
        return await self._saved(s)

    async def resume(self, schedule_id: uuid.UUID) -> Schedule:
        """Ticks that passed while it was paused are not made up for: it goes on from now."""
        s = await self.get(schedule_id)
        if s.paused:
            s.paused = False
            (s.next_run_at,) = cron.next_after(s.cron, s.timezone, datetime.now(UTC))
        return await self._saved(s)

    async def delete(self, schedule_id: uuid.UUID) -> None:
        await self.repo.delete(await self.get(schedule_id))

    async def runs(
        self, schedule_id: uuid.UUID, *, limit: int, offset: int
    ) -> tuple[list[Job], bool]:
        await self.get(schedule_id)
        rows = await self.repo.runs(schedule_id, self.org_id, limit=limit + 1, offset=offset)
        return rows[:limit], len(rows) > limit

    async def _saved(self, s: Schedule) -> Schedule:
        await self.session.flush()
        await self.session.refresh(s)
        return s


async def sync_code_schedules(redis: Redis, session: AsyncSession) -> int:
    """Add the schedules workers declared in code (:data:`SCHEDULES_KEY`) to
    ``jobs.schedules`` (no organization, ``key`` = ``<service>:<name>``); a declaration that
    changed its cron, time zone, function or arguments updates its schedule. Returns how many
    were added or changed."""
    raw: dict[bytes, bytes] = await redis.hgetall(SCHEDULES_KEY)  # type: ignore[misc]
    declared: dict[str, dict[str, Any]] = {}
    for field, value in raw.items():
        try:
            d = orjson.loads(value)
            key = f"{d['service']}:{d['name']}"
            d["cron"] = cron.check(d["cron"], d.get("timezone") or "UTC")
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError, cron.InvalidCron) as exc:
            log.warning("ignoring the schedule declared as %r: %s", field, exc)
            continue
        declared[key] = d
    repo = ScheduleRepository(session)
    existing = await repo.by_keys(list(declared))
    now = datetime.now(UTC)
    new, changed = [], 0
    for key, d in declared.items():
        tz = d.get("timezone") or "UTC"
        s = existing.get(key)
        if s is None:
            new.append(
                {
                    "id": uuid.uuid4(),
                    "key": key,
                    "name": d["name"],
                    "description": d.get("description") or None,
                    "service": d["service"],
                    "function": d["function"],
                    "kwargs": d.get("kwargs") or {},
                    "cron": d["cron"],
                    "timezone": tz,
                    "missed": d.get("missed") or "skip",
                    "next_run_at": cron.next_after(d["cron"], tz, now)[0],
                }
            )
            continue
        if (s.cron, s.timezone) != (d["cron"], tz):
            s.cron, s.timezone = d["cron"], tz
            s.next_run_at = cron.next_after(s.cron, tz, now)[0]
            changed += 1
        if (s.function, s.kwargs, s.missed) != (d["function"], d.get("kwargs") or {}, d["missed"]):
            s.function, s.kwargs, s.missed = d["function"], d.get("kwargs") or {}, d["missed"]
            changed += 1
    await repo.insert_code_schedules(new)
    return len(new) + changed
