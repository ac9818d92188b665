"""Internal jobs (platform bookkeeping: billing's usage record, one per LLM call) stay out of
users' job lists and out of their reach; admins may list and read them, not cancel or retry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.identity import Principal
from libs.queue import JobContext, JobEvent, enqueue_now, job
from libs.testing import Infra, auth_headers, client_for, principal
from libs.usage import BILLING_SERVICE, RECORD_USAGE, UsageEvent, publish_usage
from services.jobs.app import build_app
from services.jobs.jobs.recorder import EventConsumer
from services.jobs.jobs.repository import JobRepository
from tests.support.workers import run_burst

SVC = "internaltest"


@job
async def bookkeeping(ctx: JobContext, n: int) -> int:
    await ctx.progress(50, "half way")
    return n


@job
async def export(ctx: JobContext) -> str:
    return "done"


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


def usage_event(p: Principal) -> UsageEvent:
    return UsageEvent(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        org_id=p.require_org(),
        user_id=p.user_id,
        model="gpt-4o-mini",
        provider="openai",
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=Decimal("0.0001"),
    )


async def listed(client: httpx.AsyncClient, p: Principal, **params: str) -> tuple[int, list[str]]:
    resp = await client.get("/v1/jobs", params=params, headers=auth_headers(p))
    if resp.status_code != 200:
        return resp.status_code, [resp.json()["error"]["code"]]
    return 200, [j["id"] for j in resp.json()["data"]]


async def test_usage_records_are_not_in_users_job_lists(
    infra: Infra, redis: Redis, consumer: EventConsumer, client: httpx.AsyncClient
) -> None:
    member = principal(roles=["member"], scopes=["jobs:read", "jobs:write", "llm:use"])
    admin = principal(org_id=member.org_id)
    # what every chat completion sent to billing before the usage stream (still run by
    # billing's worker when an older producer queued it); a usage event now is no job at all
    usage = usage_event(member)
    await enqueue_now(
        redis,
        service=BILLING_SERVICE,
        function=RECORD_USAGE,
        args=[usage.payload()],
        job_id=usage.job_id,
        org_id=member.org_id,
        user_id=member.user_id,
        internal=True,
    )
    await publish_usage(usage_event(member), redis)
    # and work the user asked for
    mine = await enqueue_now(
        redis, service=SVC, function="export", org_id=member.org_id, user_id=member.user_id
    )
    assert mine
    await consumer.drain()

    assert await listed(client, member) == (200, [mine])
    assert await listed(client, member, status="queued") == (200, [mine])
    assert await listed(client, member, service=BILLING_SERVICE) == (200, [])
    # asking for them needs the admin scope
    assert await listed(client, member, include_internal="true") == (403, ["insufficient_scope"])
    status, ids = await listed(client, admin, include_internal="true")
    assert status == 200 and sorted(ids) == sorted([mine, usage.job_id])
    # an admin's default list is the users' list too
    assert await listed(client, admin) == (200, [mine])

    # to a member the job does not exist; it cannot be cancelled (which would skip billing)
    for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/cancel"), ("POST", "/retry")):
        resp = await client.request(
            method, f"/v1/jobs/{usage.job_id}{path}", headers=auth_headers(member)
        )
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["error"]["code"] == "job_not_found"
    # an admin may read it, not act on it
    resp = await client.get(f"/v1/jobs/{usage.job_id}", headers=auth_headers(admin))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["internal"] is True and body["function"] == RECORD_USAGE
    for action in ("cancel", "retry"):
        resp = await client.post(f"/v1/jobs/{usage.job_id}/{action}", headers=auth_headers(admin))
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"]["code"] == "job_internal"
    # still queued: billing will record it
    assert await redis.zscore(f"aistack:queue:{BILLING_SERVICE}", usage.job_id) is not None


async def test_internal_flag_travels_with_every_event_of_the_job(
    infra: Infra, redis: Redis, consumer: EventConsumer, client: httpx.AsyncClient
) -> None:
    p = principal()
    internal = await enqueue_now(
        redis, service=SVC, function="bookkeeping", args=[3], org_id=p.org_id, internal=True
    )
    visible = await enqueue_now(redis, service=SVC, function="export", org_id=p.org_id)
    assert internal and visible
    # the worker's running/progress/succeeded events, applied before the producer's queued
    # one: the row is internal from its first event on
    await run_burst(infra.redis_url, SVC, [bookkeeping, export])
    events = [
        JobEvent.from_fields(fields)
        for _, fields in await redis.xrange("aistack:job-events")
        if fields[b"job_id"].decode() == internal
    ]
    assert {e.status for e in events} == {"queued", "running", "progress", "succeeded"}
    assert all(e.internal for e in events)
    await consumer.drain()
    assert await listed(client, p) == (200, [visible])
    resp = await client.get(f"/v1/jobs/{internal}", headers=auth_headers(p))
    assert resp.json()["status"] == "succeeded" and resp.json()["internal"] is True


async def test_usage_records_from_producers_before_the_flag_are_internal_too(
    factory: async_sessionmaker[AsyncSession], client: httpx.AsyncClient, db: AsyncConnection
) -> None:
    p = principal(roles=["member"], scopes=["jobs:read"])
    old = JobEvent(
        job_id=f"usage:chat:{uuid.uuid4().hex}",
        service=BILLING_SERVICE,
        function=RECORD_USAGE,
        status="queued",
        org_id=str(p.org_id),
    )
    assert not old.internal
    async with session_scope(factory) as s:
        await JobRepository(s).apply_event(old)
    assert await listed(client, p) == (200, [])


async def test_users_list_uses_the_partial_index(db: AsyncConnection) -> None:
    """Listing reads visible rows only, however many usage records the org has."""
    await db.execute(text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join(
        (
            await db.execute(
                text(
                    "EXPLAIN SELECT * FROM jobs.jobs WHERE org_id = :org AND NOT internal "
                    "ORDER BY created_at DESC LIMIT 21"
                ),
                {"org": uuid.uuid4()},
            )
        ).scalars()
    )
    assert "ix_jobs_jobs_visible_org_id_created_at" in plan, plan
