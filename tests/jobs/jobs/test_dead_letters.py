"""Dead letters: a job out of tries is listed with ?status=dead, inspectable, retried one by one
(and succeeds) or in bulk (each once), and purged by the retention policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from opentelemetry import trace
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.queue import JobContext, RetryPolicy, enqueue_now, job
from libs.telemetry import setup_tracing
from libs.testing import Infra, auth_headers, principal
from services.jobs import tasks as jobs_tasks
from services.jobs.jobs.recorder import EventConsumer
from services.jobs.models import Job
from tests.support.workers import run_burst

SVC = "deadtest"
upstream_up = {"value": False}
calls: list[int] = []


@job(retry=RetryPolicy(max_tries=3, backoff_s=0.01, jitter=0))
async def call_upstream(ctx: JobContext, item: str) -> str:
    calls.append(ctx.attempt)
    if not upstream_up["value"]:
        raise ConnectionError(f"upstream refused {item}")
    return item


async def test_a_dead_letter_is_listed_inspected_and_retried_to_success(
    infra: Infra, redis: Redis, recorder: EventConsumer, api: httpx.AsyncClient
) -> None:
    upstream_up["value"] = False
    calls.clear()
    alice, mallory = principal(), principal()
    setup_tracing("test")
    with trace.get_tracer("test").start_as_current_span("POST /things") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        jid = await enqueue_now(
            redis, service=SVC, function="call_upstream", args=["a"], org_id=alice.org_id
        )
    other = await enqueue_now(
        redis, service=SVC, function="call_upstream", args=["b"], org_id=alice.org_id
    )
    assert jid and other
    await run_burst(infra.redis_url, SVC, [call_upstream])
    assert calls == [1, 1, 2, 2, 3, 3]
    await recorder.drain()

    listed = await api.get("/v1/jobs", params={"status": "dead"}, headers=auth_headers(alice))
    assert sorted(j["id"] for j in listed.json()["data"]) == sorted([jid, other])
    assert (
        await api.get("/v1/jobs", params={"status": "dead"}, headers=auth_headers(mallory))
    ).json()["data"] == []
    dead = (await api.get(f"/v1/jobs/{jid}", headers=auth_headers(alice))).json()
    assert dead["status"] == "dead" and dead["attempts"] == 3 and dead["max_tries"] == 3
    assert dead["args"] == ["a"] and dead["error"] == "ConnectionError: upstream refused a"
    assert "call_upstream" in dead["traceback"] and dead["trace_id"] == trace_id
    assert dead["finished_at"] and dead["retried_as"] is None

    # the upstream is back: retried, it succeeds
    upstream_up["value"] = True
    resp = await api.post(f"/v1/jobs/{jid}/retry", headers=auth_headers(alice))
    assert resp.status_code == 201, resp.text
    again = resp.json()
    assert again["retry_of"] == jid and again["status"] == "queued"
    again_twice = await api.post(f"/v1/jobs/{jid}/retry", headers=auth_headers(alice))
    assert again_twice.status_code == 409
    assert again_twice.json()["error"]["code"] == "job_already_retried"
    denied = await api.post(f"/v1/jobs/{other}/retry", headers=auth_headers(mallory))
    assert denied.status_code == 404
    await run_burst(infra.redis_url, SVC, [call_upstream])
    await recorder.drain()
    done = (await api.get(f"/v1/jobs/{again['id']}", headers=auth_headers(alice))).json()
    assert done["status"] == "succeeded" and done["attempts"] == 1
    old = (await api.get(f"/v1/jobs/{jid}", headers=auth_headers(alice))).json()
    assert old["status"] == "dead" and old["retried_as"] == again["id"]
    # the dead letters still to deal with
    pending = await api.get(
        "/v1/jobs", params={"status": "dead", "retried": "false"}, headers=auth_headers(alice)
    )
    assert [j["id"] for j in pending.json()["data"]] == [other]


async def test_dead_letters_are_retried_in_bulk_once(
    infra: Infra, redis: Redis, recorder: EventConsumer, api: httpx.AsyncClient
) -> None:
    upstream_up["value"] = False
    alice = principal()
    ids = [
        await enqueue_now(
            redis, service=SVC, function="call_upstream", args=[f"x{i}"], org_id=alice.org_id
        )
        for i in range(3)
    ]
    await run_burst(infra.redis_url, SVC, [call_upstream])
    await recorder.drain()
    upstream_up["value"] = True
    body = {"status": "dead", "function": "call_upstream", "limit": 10}
    first = await api.post("/v1/jobs/retry", json=body, headers=auth_headers(alice))
    assert first.status_code == 200, first.text
    assert first.json()["retried"] == 3
    second = await api.post("/v1/jobs/retry", json=body, headers=auth_headers(alice))
    assert second.json() == {"retried": 0, "job_ids": []}
    await run_burst(infra.redis_url, SVC, [call_upstream])
    await recorder.drain()
    for new_id in first.json()["job_ids"]:
        job_ = (await api.get(f"/v1/jobs/{new_id}", headers=auth_headers(alice))).json()
        assert job_["status"] == "succeeded" and job_["retry_of"] in ids
    bad = await api.post(
        "/v1/jobs/retry", json={"status": "succeeded"}, headers=auth_headers(alice)
    )
    assert bad.status_code == 422


async def test_retention_purges_finished_records_by_status(
    infra: Infra,
    redis: Redis,
    recorder: EventConsumer,
    sessions: async_sessionmaker[AsyncSession],
    api: httpx.AsyncClient,
) -> None:
    upstream_up["value"] = True
    alice = principal()
    ids = [
        await enqueue_now(
            redis, service=SVC, function="call_upstream", args=[f"r{i}"], org_id=alice.org_id
        )
        for i in range(2)
    ]
    await run_burst(infra.redis_url, SVC, [call_upstream])
    await recorder.drain()
    # one finished 20 days ago (past the 14 days succeeded records are kept), one now
    async with session_scope(sessions) as s:
        await s.execute(
            update(Job)
            .where(Job.id == ids[0])
            .values(finished_at=datetime.now(UTC) - timedelta(days=20))
        )
    await run_burst(infra.redis_url, "jobs", jobs_tasks.functions, ctx={"db": sessions}, max_jobs=1)
    await enqueue_now(redis, service="jobs", function="purge_expired_jobs")
    await run_burst(infra.redis_url, "jobs", jobs_tasks.functions, ctx={"db": sessions})
    assert (await api.get(f"/v1/jobs/{ids[0]}", headers=auth_headers(alice))).status_code == 404
    assert (await api.get(f"/v1/jobs/{ids[1]}", headers=auth_headers(alice))).status_code == 200
