"""Schedules: per-organization through the API (cron with a time zone, on schedulable types,
pause/resume, next runs, the runs they made); each tick fires once however many schedulers
run; ticks missed while nothing ran are skipped or run once, as the schedule says."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.queue import JobContext, job
from libs.testing import Infra, auth_headers, principal
from services.jobs.jobs.recorder import EventConsumer
from services.jobs.models import Job, Schedule
from services.jobs.schedules.scheduler import Scheduler, tick_job_id
from tests.support.job_types import publish_types
from tests.support.workers import run_burst

SVC = "scheduletest"
ran: list[str] = []


@job(user_startable=True, schedulable=True)
async def reindex(ctx: JobContext, knowledge_base: str) -> None:
    ran.append(knowledge_base)


@job(user_startable=True)
async def once_only(ctx: JobContext) -> None:
    """Users may start it, not schedule it."""


TYPES = [reindex, once_only]


async def test_an_organizations_schedules_through_the_api(
    infra: Infra,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
    recorder: EventConsumer,
    api: httpx.AsyncClient,
) -> None:
    ran.clear()
    await publish_types(redis, sessions, SVC, TYPES)
    alice, mallory = principal(), principal()
    h = auth_headers(alice)
    good = {
        "name": "nightly re-index",
        "type": f"{SVC}.reindex",
        "arguments": {"knowledge_base": "handbook"},
        "cron": "0 3 * * *",
        "timezone": "Europe/Paris",
    }
    for change, status, where in (
        ({"cron": "61 3 * * *"}, 422, "body.cron"),
        ({"cron": "0 3 * *"}, 422, "body.cron"),
        ({"timezone": "Mars/Olympus"}, 422, "body.timezone"),
        ({"arguments": {}}, 422, "body.arguments.knowledge_base"),
        ({"type": f"{SVC}.once_only", "arguments": {}}, 403, None),
        ({"type": f"{SVC}.nope"}, 404, None),
    ):
        resp = await api.post("/v1/jobs/schedules", json={**good, **change}, headers=h)
        assert resp.status_code == status, (change, resp.text)
        if where:
            assert resp.json()["error"]["details"][0]["field"] == where, resp.text

    resp = await api.post("/v1/jobs/schedules", json=good, headers=h)
    assert resp.status_code == 201, resp.text
    s = resp.json()
    assert s["type"] == f"{SVC}.reindex" and s["missed"] == "skip" and not s["paused"]
    nexts = [datetime.fromisoformat(t) for t in s["next_runs"]]
    assert len(nexts) == 5 and nexts[0] == datetime.fromisoformat(s["next_run_at"])
    # 03:00 in Paris: 01:00 or 02:00 UTC depending on the season, a day apart
    assert all(t.hour in (1, 2) and t.minute == 0 for t in nexts)
    day = (timedelta(hours=23), timedelta(hours=25))
    assert all(day[0] <= b - a <= day[1] for a, b in itertools.pairwise(nexts))

    sid = s["id"]
    assert [x["id"] for x in (await api.get("/v1/jobs/schedules", headers=h)).json()["data"]] == [
        sid
    ]
    for method, path in (
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/pause"),
        ("GET", "/runs"),
    ):
        resp = await api.request(
            method,
            f"/v1/jobs/schedules/{sid}{path}",
            json={} if method == "PATCH" else None,
            headers=auth_headers(mallory),
        )
        assert resp.status_code == 404, (method, path, resp.text)

    patched = await api.patch(
        f"/v1/jobs/schedules/{sid}", json={"cron": "@hourly", "timezone": "UTC"}, headers=h
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["cron"] == "0 * * * *"
    paused = (await api.post(f"/v1/jobs/schedules/{sid}/pause", headers=h)).json()
    assert paused["paused"] and paused["next_run_at"] is None and paused["next_runs"] == []
    resumed = (await api.post(f"/v1/jobs/schedules/{sid}/resume", headers=h)).json()
    assert not resumed["paused"] and resumed["next_run_at"]

    # every minute, and its tick has just come: the job it starts is one of its runs
    await api.patch(f"/v1/jobs/schedules/{sid}", json={"cron": "* * * * *"}, headers=h)
    async with session_scope(sessions) as session:
        row = await session.get(Schedule, uuid.UUID(sid))
        assert row is not None
        row.next_run_at = datetime.now(UTC).replace(second=0, microsecond=0)
    # at least this one: schedules other tests and apps left due fire in the same round
    assert await Scheduler(redis, sessions).run_once() >= 1
    await run_burst(infra.redis_url, SVC, TYPES)
    await recorder.drain()
    assert ran == ["handbook"]
    runs = (await api.get(f"/v1/jobs/schedules/{sid}/runs", headers=h)).json()["data"]
    assert len(runs) == 1 and runs[0]["status"] == "succeeded"
    assert runs[0]["schedule_id"] == sid and runs[0]["kwargs"] == {"knowledge_base": "handbook"}
    again = (await api.get(f"/v1/jobs/schedules/{sid}", headers=h)).json()
    assert again["runs"] == 1 and again["last_job_id"] == runs[0]["id"]

    assert (await api.delete(f"/v1/jobs/schedules/{sid}", headers=h)).status_code == 204
    assert (await api.get(f"/v1/jobs/schedules/{sid}", headers=h)).status_code == 404


@pytest.fixture
async def committed(engine: AsyncEngine) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Committed data, so two schedulers on two connections race for real."""
    factory = async_sessionmaker(engine, expire_on_commit=False)
    yield factory
    async with session_scope(factory) as session:
        await session.execute(delete(Job).where(Job.service == SVC))
        await session.execute(delete(Schedule).where(Schedule.service == SVC))


async def _schedule(
    factory: async_sessionmaker[AsyncSession], cron: str, next_run_at: datetime, missed: str
) -> uuid.UUID:
    s = Schedule(
        org_id=uuid.uuid4(),
        name="t",
        service=SVC,
        function="reindex",
        kwargs={"knowledge_base": "kb"},
        cron=cron,
        timezone="UTC",
        missed=missed,
        next_run_at=next_run_at,
    )
    async with session_scope(factory) as session:
        session.add(s)
    return s.id


async def _jobs_of(factory: async_sessionmaker[AsyncSession], sid: uuid.UUID) -> list[str]:
    async with factory() as session:
        return sorted((await session.scalars(select(Job.id).where(Job.schedule_id == sid))).all())


async def test_two_schedulers_fire_each_tick_once(
    redis: Redis, committed: async_sessionmaker[AsyncSession]
) -> None:
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    sid = await _schedule(committed, "* * * * *", t0, "skip")
    first, second = Scheduler(redis, committed), Scheduler(redis, committed)
    for minute in range(6):
        now = t0 + timedelta(minutes=minute, seconds=1)
        for _ in range(3):  # several rounds per tick, both at once
            await asyncio.gather(first.run_once(now), second.run_once(now))
    # counted on this schedule (the schedulers also fire what other tests left due)
    ticks = [t0 + timedelta(minutes=m) for m in range(6)]
    assert await _jobs_of(committed, sid) == sorted(tick_job_id(sid, t) for t in ticks)
    async with committed() as session:
        s = await session.get(Schedule, sid)
        assert s is not None and s.runs == 6  # a tick fired twice would count twice here
    for t in ticks:  # each enqueued
        assert await redis.exists(f"arq:job:{tick_job_id(sid, t)}")


@pytest.mark.parametrize(("missed", "fires"), [("skip", 0), ("run_once", 1)])
async def test_ticks_missed_while_nothing_ran(
    redis: Redis, committed: async_sessionmaker[AsyncSession], missed: str, fires: int
) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    # down for three hours: the 5 ticks since are all past the grace by now + 30 minutes
    sid = await _schedule(committed, "0 * * * *", hour - timedelta(hours=3), missed)
    now = hour + timedelta(minutes=30)
    await Scheduler(redis, committed).run_once(now)
    # counted on this schedule (the scheduler also fires what other tests left due)
    assert len(await _jobs_of(committed, sid)) == fires
    async with committed() as session:
        s = await session.get(Schedule, sid)
        assert s is not None and s.next_run_at == hour + timedelta(hours=1)
    if fires:
        # once, for the latest tick missed
        assert await _jobs_of(committed, sid) == [tick_job_id(sid, hour)]
