"""The fan-out in batches (what the worker does with its concurrent deliver_notification jobs):
a batch gives what its events one by one would (each recipient once, duplicates nothing, the
same live payload as the list), a failed recipients lookup leaves only its event undelivered,
and a batch the database refuses is delivered again one event at a time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.errors import ServiceUnavailable
from libs.notify import FUNCTION, BudgetThreshold, Event, JobOutcome, make_event
from libs.queue import JobContext
from libs.settings import DEV_INTERNAL_SECRET
from services.jobs.notifications import tasks as notification_tasks
from services.jobs.notifications.fanout import (
    Fanout,
    FanoutBatcher,
    Person,
    Recipients,
    new_ids,
)
from services.jobs.notifications.inbox import inbox_key
from services.jobs.notifications.models import NotificationEvent
from services.jobs.settings import JobsSettings
from tests.jobs.notifications.conftest import Stack
from tests.support.stacks.auth import Account, signup


def failed(acct: Account, job: str, error: str = "boom") -> Event:
    return make_event(
        "job.failed",
        JobOutcome(job_id=job, service="jobs", function="sleep", status="failed", error=error),
        org_id=acct.org_id,
        user_id=acct.user_id,
        subject={"job_id": job},
        source="jobs",
    )


async def listed(stack: Stack, acct: Account) -> list[dict[str, Any]]:
    resp = await stack.jobs.get("/v1/notifications", headers=acct.headers)
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return data


async def pushed(redis: Redis, acct: Account) -> list[dict[str, Any]]:
    entries = await redis.xrange(inbox_key(acct.user_id))
    return [orjson.loads(f[b"d"]) for _, f in entries if f[b"t"] == b"notification"]


async def test_a_batch_gives_what_its_events_one_by_one_would(stack: Stack, redis: Redis) -> None:
    alice, bob = await signup(stack.auth), await signup(stack.auth)
    earlier, j1, j2, b1 = (
        failed(alice, "j0"),
        failed(alice, "j1"),
        failed(alice, "j2"),
        failed(bob, "b1"),
    )
    assert await stack.fanout.deliver(earlier) == 1
    # the earlier event again and j1 twice: each recipient still gets each event once
    got = await stack.fanout.deliver_many([earlier, j1, j1, j2, b1])
    assert got == [0, 1, 0, 1, 1]

    mine = await listed(stack, alice)
    assert [n["subject"]["job_id"] for n in mine] == ["j2", "j1", "j0"]
    assert [n["subject"]["job_id"] for n in await listed(stack, bob)] == ["b1"]
    unread = await stack.jobs.get("/v1/notifications/unread-count", headers=alice.headers)
    assert unread.json() == {"unread": 3}
    # the live stream carried each notification once, as the list shows it
    assert await pushed(redis, alice) == mine[::-1]
    assert await pushed(redis, bob) == await listed(stack, bob)
    await redis.delete(inbox_key(alice.user_id), inbox_key(bob.user_id))


class FailingFor(Recipients):
    """auth, failing for one organization's members."""

    def __init__(self, inner: Recipients, org_id: uuid.UUID) -> None:
        super().__init__(inner.http, inner.auth_url, inner.secret)
        self.org_id = org_id

    async def members(
        self, org_id: uuid.UUID, roles: list[str], user_ids: list[uuid.UUID]
    ) -> tuple[list[Person], str]:
        if org_id == self.org_id:
            raise ServiceUnavailable("auth answered 503", code="auth_unavailable")
        return await super().members(org_id, roles, user_ids)


async def test_a_failed_recipients_lookup_leaves_only_its_event_undelivered(
    stack: Stack, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice, bob = await signup(stack.auth), await signup(stack.auth)
    a1, b1 = failed(alice, "a1"), failed(bob, "b1")
    fanout = Fanout(
        sessions, redis, FailingFor(stack.fanout.recipients, bob.org_id), ask_concurrency=1
    )
    got = await fanout.deliver_many([a1, b1])
    assert got[0] == 1 and isinstance(got[1], ServiceUnavailable)
    assert [n["subject"]["job_id"] for n in await listed(stack, alice)] == ["a1"]
    async with sessions() as session:
        kept = set(await session.scalars(select(NotificationEvent.id)))
    assert a1.id in kept and b1.id not in kept  # not recorded: its retry delivers it
    assert await stack.fanout.deliver(b1) == 1
    await redis.delete(inbox_key(alice.user_id), inbox_key(bob.user_id))


class Counting(Fanout):
    def __init__(self, fanout: Fanout) -> None:
        super().__init__(
            fanout.sessions,
            fanout.redis,
            fanout.recipients,
            ask_concurrency=fanout.ask_concurrency,
        )
        self.batches: list[int] = []

    async def deliver_many(self, events: Sequence[Event]) -> list[int | Exception]:
        self.batches.append(len(events))
        return await super().deliver_many(events)


async def test_the_batcher_gathers_concurrent_events_and_isolates_a_refused_one(
    stack: Stack, redis: Redis
) -> None:
    alice = await signup(stack.auth)
    fanout = Counting(stack.fanout)
    batcher = FanoutBatcher(fanout, max_batch=3)
    events = [failed(alice, f"j{i}") for i in range(5)]
    assert await asyncio.gather(*(batcher.deliver(ev) for ev in events)) == [1] * 5
    assert fanout.batches == [3, 2]

    # PostgreSQL refuses a NUL in JSON: that batch fails, then each event is tried alone
    fanout.batches.clear()
    poison, fine = failed(alice, "bad", error="nul \x00"), failed(alice, "fine")
    results = await asyncio.gather(
        batcher.deliver(poison), batcher.deliver(fine), return_exceptions=True
    )
    assert isinstance(results[0], DBAPIError) and results[1] == 1
    assert fanout.batches == [2, 1, 1]
    jobs = [n["subject"]["job_id"] for n in await listed(stack, alice)]
    assert jobs == ["fine", "j4", "j3", "j2", "j1", "j0"]
    with pytest.raises(DBAPIError):
        await stack.fanout.deliver(poison)
    await redis.delete(inbox_key(alice.user_id))


def test_notification_ids_are_time_ordered_version_7_uuids() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_ids(1000)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    parsed = [uuid.UUID(x) for x in ids]
    assert all(str(u) == x and u.version == 7 for u, x in zip(parsed, ids, strict=True))
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    assert all(before <= u.int >> 80 <= after for u in parsed)  # the 48-bit ms timestamp


async def test_the_worker_s_jobs_share_one_batcher_and_one_http_client(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    ctx: dict[str, Any] = {"db": sessions, "redis": redis}
    notification_tasks.on_startup(ctx, JobsSettings())
    # each job gets a copy of the worker's context, as arq makes it
    jobs = [
        JobContext(
            job_id=f"notify-{i}",
            service="jobs",
            function=FUNCTION,
            attempt=1,
            redis=redis,
            state={**ctx, "job_id": f"notify-{i}"},
        )
        for i in range(2)
    ]
    first, second = (notification_tasks.batcher_of(jc) for jc in jobs)
    assert first is second is ctx["fanout_batcher"]
    assert first.fanout.recipients.http is ctx["http"]
    await ctx["http"].aclose()


async def test_a_batch_asks_auth_each_distinct_question_once_and_at_once(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    orgs = {uuid.uuid4(): uuid.uuid4(), uuid.uuid4(): uuid.uuid4()}  # org -> its one admin
    asked: list[str] = []
    in_flight = peak = 0

    async def auth(request: httpx.Request) -> httpx.Response:  # auth's recipients route
        nonlocal in_flight, peak
        asked.append(request.url.path)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        org = uuid.UUID(request.url.path.split("/")[3])
        member = {"user_id": str(orgs[org]), "email": None, "display_name": ""}
        return httpx.Response(200, json={"members": [member], "org": {"name": "T"}})

    http = httpx.AsyncClient(transport=httpx.MockTransport(auth))
    fanout = Fanout(sessions, redis, Recipients(http, "http://auth", DEV_INTERNAL_SECRET))
    events = [
        make_event(
            "billing.budget_threshold",
            BudgetThreshold(threshold_percent=80, spent_usd=f"{i}.00", limit_usd="100.00"),
            org_id=org,
            source="billing",
        )
        for i, org in enumerate([*orgs, *orgs])
    ]
    assert await fanout.deliver_many(events) == [1, 1, 1, 1]
    assert sorted(asked) == sorted(f"/internal/orgs/{org}/recipients" for org in orgs)
    assert peak == 2  # the two organizations' questions were asked together
    await http.aclose()
    await redis.delete(*(inbox_key(u) for u in orgs.values()))
