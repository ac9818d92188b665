from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.identity import Principal
from libs.logging import JsonFormatter
from libs.queue import JobContext, JobEvent, enqueue_now, job
from libs.testing import Infra, auth_headers, client_for, principal
from services.jobs import tasks as jobs_tasks
from services.jobs.app import build_app
from services.jobs.jobs.recorder import EventConsumer
from services.jobs.jobs.repository import JobRepository
from tests.support.workers import events_for, make_worker, run_burst

SVC = "jobstest"
flaky_calls: list[str] = []


@job
async def flaky(ctx: JobContext, value: str) -> str:
    flaky_calls.append(value)
    if len(flaky_calls) == 1:
        raise RuntimeError("first try fails")
    return value


@job
async def steps(ctx: JobContext, n: int) -> int:
    for i in range(n):
        await ctx.progress((i + 1) * 100 / n, f"step {i + 1}")
    return n


started = asyncio.Event()


@job
async def long(ctx: JobContext) -> None:
    for i in range(1000):
        await ctx.progress(i / 10)
        started.set()
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def _reset() -> None:
    flaky_calls.clear()
    started.clear()


@pytest.fixture
def factory(db: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )


@pytest.fixture
def consumer(redis: Redis, factory: async_sessionmaker[AsyncSession]) -> EventConsumer:
    return EventConsumer(redis, factory, consumer="test")


@pytest.fixture
async def client(db: AsyncConnection, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(build_app(), connection=db) as c:
        yield c


async def _get(c: httpx.AsyncClient, p: Principal, job_id: str) -> httpx.Response:
    return await c.get(f"/v1/jobs/{job_id}", headers=auth_headers(p))


async def test_events_reach_jobs_table_and_tenant_isolation(
    infra: Infra, redis: Redis, consumer: EventConsumer, client: httpx.AsyncClient
) -> None:
    alice, mallory = principal(), principal()
    jid = await enqueue_now(
        redis, service=SVC, function="steps", args=[2], org_id=alice.org_id, user_id=alice.user_id
    )
    assert jid
    await consumer.drain()
    body = (await _get(client, alice, jid)).json()
    assert body["status"] == "queued" and body["args"] == [2] and body["function"] == "steps"

    await run_burst(infra.redis_url, SVC, [steps])
    assert await consumer.drain() == 4  # running, 2 x progress, succeeded
    body = (await _get(client, alice, jid)).json()
    assert body["status"] == "succeeded"
    assert body["progress"] == 100 and body["message"] == "step 2"
    assert body["started_at"] and body["finished_at"] and body["attempts"] == 1

    listing = await client.get(
        "/v1/jobs", params={"status": "succeeded", "service": SVC}, headers=auth_headers(alice)
    )
    assert [j["id"] for j in listing.json()["data"]] == [jid]
    listing = await client.get("/v1/jobs", params={"status": "failed"}, headers=auth_headers(alice))
    assert listing.json()["data"] == []

    # another organization sees nothing and cannot act on it
    assert (await client.get("/v1/jobs", headers=auth_headers(mallory))).json()["data"] == []
    for method, path in (
        ("GET", ""),
        ("POST", "/cancel"),
        ("POST", "/retry"),
        ("GET", "/events"),
    ):
        resp = await client.request(method, f"/v1/jobs/{jid}{path}", headers=auth_headers(mallory))
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["error"]["code"] == "job_not_found"


async def test_events_applied_out_of_order_and_twice(
    factory: async_sessionmaker[AsyncSession],
) -> None:
    t0 = datetime.now(UTC)
    base = {"job_id": "ooo-1", "service": SVC, "function": "f", "org_id": None}

    def ev(status: str, s: float, **kw: Any) -> JobEvent:
        return JobEvent(**base, status=status, ts=t0 + timedelta(seconds=s), **kw)  # type: ignore[arg-type]

    events = [
        ev("succeeded", 4),
        ev("progress", 2, progress=40, message="half"),
        ev("running", 1),
        ev("progress", 3, progress=80, message="most"),
        ev("queued", 0, args=[1, 2], progress=0),
        ev("progress", 2, progress=40, message="half"),  # duplicate delivery
        ev("succeeded", 4),
    ]
    for e in events:
        async with session_scope(factory) as s:
            await JobRepository(s).apply_event(e)
    async with session_scope(factory) as s:
        row = await JobRepository(s).get("ooo-1")  # type: ignore[arg-type]
        assert row is not None
        assert row.status == "succeeded"
        assert row.progress == 100
        assert row.args == [1, 2]
        assert row.created_at == t0 and row.finished_at == t0 + timedelta(seconds=4)
        assert row.started_at == t0 + timedelta(seconds=1)
    # a later attempt (arq re-ran it after a crash) moves it on again
    async with session_scope(factory) as s:
        await JobRepository(s).apply_event(ev("running", 5, attempt=2))
        await JobRepository(s).apply_event(ev("progress", 3, progress=80, attempt=1))
    async with session_scope(factory) as s:
        row = await JobRepository(s).get("ooo-1")  # type: ignore[arg-type]
        assert row is not None
        assert (row.status, row.attempts, row.finished_at) == ("running", 2, None)


async def test_cancel_queued_job(
    infra: Infra, redis: Redis, consumer: EventConsumer, client: httpx.AsyncClient
) -> None:
    alice = principal()
    jid = await enqueue_now(redis, service=SVC, function="flaky", args=["x"], org_id=alice.org_id)
    assert jid
    await consumer.drain()
    resp = await client.post(f"/v1/jobs/{jid}/cancel", headers=auth_headers(alice))
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "cancelled" and resp.json()["cancel_requested_at"]
    await run_burst(infra.redis_url, SVC, [flaky])
    assert flaky_calls == []
    await consumer.drain()
    assert (await _get(client, alice, jid)).json()["status"] == "cancelled"
    again = await client.post(f"/v1/jobs/{jid}/cancel", headers=auth_headers(alice))
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"
    reader = principal(org_id=alice.org_id, scopes=["jobs:read"])
    denied = await client.post(f"/v1/jobs/{jid}/cancel", headers=auth_headers(reader))
    assert denied.status_code == 403


async def test_cancel_running_job(
    infra: Infra, redis: Redis, consumer: EventConsumer, client: httpx.AsyncClient
) -> None:
    alice = principal()
    jid = await enqueue_now(redis, service=SVC, function="long", org_id=alice.org_id)
    assert jid
    worker = make_worker(infra.redis_url, SVC, [long])
    task = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        await consumer.drain()
        assert (await _get(client, alice, jid)).json()["status"] == "running"
        resp = await client.post(f"/v1/jobs/{jid}/cancel", headers=auth_headers(alice))
        assert resp.status_code == 202, resp.text
        await asyncio.wait_for(task, 10)
    finally:
        await worker.close()
    await consumer.drain()
    body = (await _get(client, alice, jid)).json()
    assert body["status"] == "cancelled"
    assert body["progress"] < 100


async def test_retry_failed_job(
    infra: Infra, redis: Redis, consumer: EventConsumer, client: httpx.AsyncClient
) -> None:
    alice = principal()
    jid = await enqueue_now(redis, service=SVC, function="flaky", args=["v"], org_id=alice.org_id)
    assert jid
    await run_burst(infra.redis_url, SVC, [flaky])
    await consumer.drain()
    failed = (await _get(client, alice, jid)).json()
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: first try fails"

    resp = await client.post(f"/v1/jobs/{jid}/retry", headers=auth_headers(alice))
    assert resp.status_code == 201, resp.text
    new = resp.json()
    assert new["id"] != jid and new["retry_of"] == jid and new["status"] == "queued"
    await run_burst(infra.redis_url, SVC, [flaky])
    await consumer.drain()
    done = (await _get(client, alice, new["id"])).json()
    assert done["status"] == "succeeded" and done["retry_of"] == jid
    assert flaky_calls == ["v", "v"]
    not_retryable = await client.post(f"/v1/jobs/{new['id']}/retry", headers=auth_headers(alice))
    assert not_retryable.status_code == 409
    assert not_retryable.json()["error"]["code"] == "job_not_retryable"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.setFormatter(JsonFormatter("jobs-worker"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_purge_job_end_to_end_with_trace(
    infra: Infra,
    redis: Redis,
    consumer: EventConsumer,
    client: httpx.AsyncClient,
    factory: async_sessionmaker[AsyncSession],
) -> None:
    admin = principal()
    other = principal()
    old = datetime.now(UTC) - timedelta(days=40)
    # two old finished jobs and one still queued in admin's org, one old in another org
    seeds = [
        ("old-1", admin, "succeeded"),
        ("old-2", admin, "failed"),
        ("live-1", admin, "queued"),
        ("other-1", other, "succeeded"),
    ]
    async with session_scope(factory) as s:
        for jid, p, status in seeds:
            await JobRepository(s).apply_event(
                JobEvent(
                    job_id=jid,
                    service=SVC,
                    function="f",
                    status=status,
                    org_id=str(p.org_id),
                    ts=old,
                )
            )

    plain = principal(org_id=admin.org_id, scopes=["jobs:read", "jobs:write"])
    denied = await client.post(
        "/v1/jobs/maintenance/purge", json={"older_than_days": 30}, headers=auth_headers(plain)
    )
    assert denied.status_code == 403

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {
        **auth_headers(admin),
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        "x-request-id": "req-purge-1",
    }
    resp = await client.post(
        "/v1/jobs/maintenance/purge", json={"older_than_days": 30}, headers=headers
    )
    assert resp.status_code == 202, resp.text
    purge = resp.json()
    assert purge["status"] == "queued" and purge["function"] == "purge_finished_jobs"
    assert purge["request_id"] == "req-purge-1" and purge["trace_id"] == trace_id

    capture = _Capture()
    task_log = logging.getLogger("aistack.jobs.tasks")
    task_log.addHandler(capture)
    task_log.setLevel(logging.INFO)
    try:
        await run_burst(infra.redis_url, "jobs", jobs_tasks.functions, ctx={"db": factory})
    finally:
        task_log.removeHandler(capture)
    await consumer.drain()

    done = (await _get(client, admin, purge["id"])).json()
    assert done["status"] == "succeeded", done
    assert done["message"] == "deleted 2 of 2"
    for jid in ("old-1", "old-2"):
        assert (await _get(client, admin, jid)).status_code == 404
    assert (await _get(client, admin, "live-1")).status_code == 200
    assert (await _get(client, other, "other-1")).status_code == 200

    [line] = [x for x in capture.lines if x["msg"].startswith("purged")]
    assert line["request_id"] == "req-purge-1" and line["trace_id"] == trace_id
    evs = await events_for(redis, purge["id"])
    assert {e.status for e in evs} >= {"queued", "running", "progress", "succeeded"}
    assert {e.trace_id for e in evs} == {trace_id}
    assert {e.request_id for e in evs} == {"req-purge-1"}


async def test_progress_stream_sse(
    infra: Infra, redis: Redis, consumer: EventConsumer, client: httpx.AsyncClient
) -> None:
    alice = principal()
    jid = await enqueue_now(redis, service=SVC, function="steps", args=[2], org_id=alice.org_id)
    assert jid
    await run_burst(infra.redis_url, SVC, [steps])
    await consumer.drain()
    resp = await client.get(f"/v1/jobs/{jid}/events", headers=auth_headers(alice))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in resp.text.split("\n\n") if b]
    kinds = [b.split("\n")[0] for b in blocks]
    assert kinds == ["event: progress", "event: end"]
    snapshot = json.loads(blocks[0].split("\n")[1].removeprefix("data: "))
    assert snapshot["status"] == "succeeded" and snapshot["progress"] == 100


async def test_consumer_loses_nothing_while_down_or_crashed(
    redis: Redis, factory: async_sessionmaker[AsyncSession], client: httpx.AsyncClient
) -> None:
    alice = principal()
    # sent before the jobs service ever ran: the group starts at the beginning of the stream
    a = await enqueue_now(redis, service=SVC, function="steps", args=[1], org_id=alice.org_id)
    crashed = EventConsumer(redis, factory, consumer="crashed")
    await crashed.ensure_group()
    b = await enqueue_now(redis, service=SVC, function="steps", args=[2], org_id=alice.org_id)
    # "crashed" reads both events and dies before applying/acknowledging them
    assert len(await crashed._read(">", None)) == 2
    survivor = EventConsumer(redis, factory, consumer="survivor", claim_idle_ms=0)
    assert await survivor.drain() == 2
    for jid in (a, b):
        assert jid and (await _get(client, alice, jid)).json()["status"] == "queued"
    pending = await redis.xpending("aistack:job-events", "jobs-recorder")
    assert pending["pending"] == 0
