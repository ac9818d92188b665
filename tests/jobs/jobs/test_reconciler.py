"""The reconciler: Redis losing its data (FLUSHALL) loses no job; a job whose worker died with
Redis' copy of it runs again as its next attempt (or ends a dead letter); a job whose end
event was lost is closed from its result; a job still running somewhere is left alone."""

from __future__ import annotations

import pickle
import uuid

import httpx
import pytest
from arq.constants import result_key_prefix
from redis.asyncio import Redis
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.queue import JobContext, JobEvent, enqueue_now, job
from libs.queue.names import WORKER_KEY_PREFIX
from libs.testing import Infra, auth_headers, principal
from services.jobs.jobs.reconciler import Reconciler
from services.jobs.jobs.recorder import EventConsumer
from services.jobs.jobs.repository import JobRepository
from services.jobs.models import Job
from tests.support.job_types import publish_types
from tests.support.workers import events_for, run_burst

SVC = "reconciletest"
ran: list[str] = []


@pytest.fixture(autouse=True)
async def only_these_tests_jobs(db: AsyncConnection) -> None:
    """The reconciler checks every unfinished record: those other tests of the session left
    behind are set aside, inside this test's transaction (rolled back after it)."""
    await db.execute(delete(Job).where(Job.status.in_(("queued", "running"))))


@job(user_startable=True)
async def note(ctx: JobContext, value: str) -> str:
    ran.append(value)
    return value


async def test_redis_flushed_with_jobs_waiting_loses_none_and_runs_each_once(
    infra: Infra,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
    recorder: EventConsumer,
    api: httpx.AsyncClient,
) -> None:
    ran.clear()
    await publish_types(redis, sessions, SVC, [note])
    alice = principal()
    started = []
    for i in range(3):  # through the API: recorded, then enqueued
        resp = await api.post(
            "/v1/jobs",
            json={"type": f"{SVC}.note", "arguments": {"value": f"api{i}"}},
            headers=auth_headers(alice),
        )
        assert resp.status_code == 202, resp.text
        started.append(resp.json()["id"])
    for i in range(2):  # by another service: recorded from their queued events
        jid = await enqueue_now(
            redis, service=SVC, function="note", kwargs={"value": f"svc{i}"}, org_id=alice.org_id
        )
        assert jid
        started.append(jid)
    await recorder.drain()

    await redis.flushall()  # Redis restarted without its data

    reconciler = Reconciler(redis, sessions, grace_s=0)
    first = await reconciler.run_once()
    assert (first.checked, first.requeued) == (5, 5)
    # once: a second pass finds them all queued again
    assert (await reconciler.run_once()).requeued == 0
    await run_burst(infra.redis_url, SVC, [note])
    assert sorted(ran) == ["api0", "api1", "api2", "svc0", "svc1"]
    await recorder.drain()  # its consumer group went with the flush: made again
    for jid in started:
        body = (await api.get(f"/v1/jobs/{jid}", headers=auth_headers(alice))).json()
        assert body["status"] == "succeeded" and body["attempts"] == 1, body


async def _record(sessions: async_sessionmaker[AsyncSession], *events: JobEvent) -> None:
    async with session_scope(sessions) as s:
        for ev in events:
            await JobRepository(s).apply_event(ev)


def _event(job_id: str, status: str, org: str, **kw: object) -> JobEvent:
    return JobEvent(
        job_id=job_id,
        service=SVC,
        function="note",
        status=status,
        org_id=org,
        args=[] if status == "queued" else None,
        kwargs={"value": job_id} if status == "queued" else None,
        **kw,  # type: ignore[arg-type]
    )


async def test_running_records_whose_job_redis_lost(
    infra: Infra,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
    recorder: EventConsumer,
    api: httpx.AsyncClient,
) -> None:
    ran.clear()
    alice = principal()
    org = str(alice.org_id)
    crashed, out_of_tries, still_running, ended = (f"r-{uuid.uuid4().hex}" for _ in range(4))
    await _record(
        sessions,
        _event(crashed, "queued", org),
        _event(crashed, "running", org, worker="gone-worker", max_tries=3),
        _event(out_of_tries, "queued", org),
        _event(out_of_tries, "running", org, worker="gone-worker", attempt=3, max_tries=3),
        _event(still_running, "queued", org),
        _event(still_running, "running", org, worker="live-worker", max_tries=3),
        _event(ended, "queued", org),
        _event(ended, "running", org, worker="gone-worker"),
    )
    await redis.set(WORKER_KEY_PREFIX + "live-worker", b"{}", ex=60)
    # arq kept the result of the one that ended; its succeeded event was lost
    await redis.set(result_key_prefix + ended, pickle.dumps({"s": True, "r": "done", "t": 1}))

    reconciler = Reconciler(redis, sessions, grace_s=0, worker_gone_s=0)
    done = await reconciler.run_once()
    assert (done.requeued, done.closed, done.dead) == (1, 1, 1)
    await run_burst(infra.redis_url, SVC, [note])
    assert ran == [crashed]  # the one whose worker died, again; not the one still running
    await recorder.drain()

    async def get(jid: str) -> httpx.Response:
        return await api.get(f"/v1/jobs/{jid}", headers=auth_headers(alice))

    body = (await get(crashed)).json()
    assert (body["status"], body["attempts"]) == ("succeeded", 2)
    requeued = (await events_for(redis, crashed))[0]
    assert (requeued.status, requeued.attempt) == ("queued", 2)
    body = (await get(out_of_tries)).json()
    assert body["status"] == "dead" and "out of tries" in body["error"]
    assert (await get(still_running)).json()["status"] == "running"
    body = (await get(ended)).json()
    assert body["status"] == "succeeded" and "result" in body["message"]
