"""The in-app center: an event becomes its recipients' notifications once (members only, by
role when it names nobody); list, filters, cursor pages, unread count, read, archive; another
user's or organization's notifications answer 404."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.db import commit
from libs.identity import Principal
from libs.notify import Event, JobOutcome, MemberInvited, emit, job_id_for, make_event
from libs.queue.names import queue_name
from libs.testing import auth_headers
from services.auth.models import Membership
from services.jobs.notifications.models import NotificationEvent
from tests.jobs.notifications.conftest import Stack
from tests.support.stacks.auth import Account, signup


def failed(acct: Account, job: str = "j1") -> Event:
    return make_event(
        "job.failed",
        JobOutcome(job_id=job, service="jobs", function="sleep", status="failed", error="boom"),
        org_id=acct.org_id,
        user_id=acct.user_id,
        subject={"job_id": job},
        source="jobs",
    )


async def test_an_event_reaches_its_user_once_and_is_read_then_archived(stack: Stack) -> None:
    alice = await signup(stack.auth)
    ev = failed(alice)
    assert await stack.fanout.deliver(ev) == 1
    assert await stack.fanout.deliver(ev) == 0  # the same event again: nothing more

    h = alice.headers
    resp = await stack.jobs.get("/v1/notifications", headers=h)
    assert resp.status_code == 200, resp.text
    (n,) = resp.json()["data"]
    assert (n["kind"], n["event_id"], n["read_at"]) == ("job.failed", str(ev.id), None)
    assert n["data"]["error"] == "boom" and n["subject"] == {"job_id": "j1"}
    assert (await stack.jobs.get("/v1/notifications/unread-count", headers=h)).json() == {
        "unread": 1
    }

    resp = await stack.jobs.post(f"/v1/notifications/{n['id']}/read", headers=h)
    assert resp.status_code == 200 and resp.json()["read_at"] is not None
    assert (await stack.jobs.get("/v1/notifications/unread-count", headers=h)).json()["unread"] == 0
    unread = await stack.jobs.get("/v1/notifications", params={"unread": "true"}, headers=h)
    assert unread.json()["data"] == []

    resp = await stack.jobs.post(f"/v1/notifications/{n['id']}/archive", headers=h)
    assert resp.status_code == 200 and resp.json()["archived_at"] is not None
    assert (await stack.jobs.get("/v1/notifications", headers=h)).json()["data"] == []
    shelved = await stack.jobs.get("/v1/notifications", params={"archived": "true"}, headers=h)
    assert [x["id"] for x in shelved.json()["data"]] == [n["id"]]


async def test_pages_filters_and_read_all(stack: Stack) -> None:
    alice = await signup(stack.auth)
    for i in range(5):
        await stack.fanout.deliver(failed(alice, f"j{i}"))
    h = alice.headers
    first = (await stack.jobs.get("/v1/notifications", params={"limit": 2}, headers=h)).json()
    assert [x["subject"]["job_id"] for x in first["data"]] == ["j4", "j3"] and first["has_more"]
    rest = await stack.jobs.get(
        "/v1/notifications", params={"limit": 10, "after": first["last_id"]}, headers=h
    )
    assert [x["subject"]["job_id"] for x in rest.json()["data"]] == ["j2", "j1", "j0"]
    assert not rest.json()["has_more"]
    by_kind = await stack.jobs.get("/v1/notifications", params={"kind": "job.succeeded"}, headers=h)
    assert by_kind.json()["data"] == []
    bad = await stack.jobs.get("/v1/notifications", params={"kind": "no.such"}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_kind"

    resp = await stack.jobs.post("/v1/notifications/read-all", headers=h)
    assert resp.json() == {"marked": 5, "unread": 0}


async def test_org_wide_events_go_to_members_by_role_and_never_to_former_members(
    stack: Stack, db: AsyncConnection
) -> None:
    owner, member, gone = [await signup(stack.auth) for _ in range(3)]
    db_session = AsyncSession(bind=db, join_transaction_mode="create_savepoint")
    db_session.add(Membership(org_id=owner.org_id, user_id=member.user_id, role="member"))
    await db_session.commit()
    invited = make_event(
        "org.member.invited",
        MemberInvited(invite_id=uuid.uuid4(), email="x@example.com", role="member"),
        org_id=owner.org_id,
        source="auth",
    )
    assert await stack.fanout.deliver(invited) == 1  # the owner; not the plain member
    got = await stack.jobs.get("/v1/notifications", headers=owner.headers)
    assert [x["kind"] for x in got.json()["data"]] == ["org.member.invited"]

    # an event about the owner's organization naming someone who does not belong to it
    stray = make_event(
        "job.failed",
        JobOutcome(job_id="x", service="jobs", function="f", status="failed"),
        org_id=owner.org_id,
        user_id=gone.user_id,
        source="jobs",
    )
    assert await stack.fanout.deliver(stray) == 0
    assert (await stack.jobs.get("/v1/notifications", headers=gone.headers)).json()["data"] == []


async def test_another_users_or_organizations_notification_answers_404(stack: Stack) -> None:
    alice, bob = await signup(stack.auth), await signup(stack.auth)
    await stack.fanout.deliver(failed(alice))
    (n,) = (await stack.jobs.get("/v1/notifications", headers=alice.headers)).json()["data"]
    for path in (f"/v1/notifications/{n['id']}", f"/v1/notifications/{n['id']}/read"):
        method = stack.jobs.get if path.endswith(n["id"]) else stack.jobs.post
        resp = await method(path, headers=bob.headers)
        assert resp.status_code == 404, resp.text
    # alice acting in another organization does not see it either
    elsewhere = Principal(
        user_id=alice.user_id, org_id=uuid.uuid4(), roles=["owner"], scopes=["jobs:read"]
    )
    resp = await stack.jobs.get(f"/v1/notifications/{n['id']}", headers=auth_headers(elsewhere))
    assert resp.status_code == 404
    assert (await stack.jobs.get("/v1/notifications", headers=alice.headers)).json()["data"]


async def test_emit_enqueues_the_delivery_after_commit_once_per_event(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    org, user = uuid.uuid4(), uuid.uuid4()
    data = JobOutcome(job_id="k", service="jobs", function="f", status="succeeded")
    async with sessions() as session:
        ev = await emit(session, redis, "job.succeeded", data, source="t", org_id=org, user_id=user)
        assert not await redis.exists(f"arq:job:{job_id_for(ev.id)}")
        await session.rollback()
        session.info.pop("after_commit", None)
    assert not await redis.exists(f"arq:job:{job_id_for(ev.id)}")

    async with sessions() as session:
        kw: dict[str, Any] = {"org_id": org, "user_id": user, "key": "k"}
        ev = await emit(session, redis, "job.succeeded", data, source="t", **kw)
        again = await emit(session, redis, "job.succeeded", data, source="t", **kw)
        await commit(session)
    assert ev.id == again.id
    assert await redis.exists(f"arq:job:{job_id_for(ev.id)}")
    assert await redis.zscore(queue_name("jobs"), job_id_for(ev.id)) is not None
    try:
        make_event("job.succeeded", data, org_id=org)  # goes to one user: none named
    except ValueError:
        pass
    else:
        raise AssertionError("an event without its recipient was accepted")


async def test_kinds_are_listed_with_their_payload_schemas(stack: Stack) -> None:
    alice = await signup(stack.auth)
    resp = await stack.jobs.get("/v1/notifications/kinds", headers=alice.headers)
    assert resp.status_code == 200
    kinds = {k["name"]: k for k in resp.json()["data"]}
    assert kinds["job.failed"]["default_channels"] == ["in_app", "email"]
    assert kinds["security.new_sign_in"]["mandatory"] is True
    assert "error" in kinds["job.failed"]["payload_schema"]["properties"]
    doc = (await stack.jobs.get("/openapi.json")).json()
    assert "JobOutcome" in doc["components"]["schemas"]
    payloads = doc["paths"]["/v1/notifications/kinds"]["get"]["x-payloads"]
    assert payloads["job.failed"] == {"$ref": "#/components/schemas/JobOutcome"}


async def test_events_are_kept_once(stack: Stack, db: AsyncConnection) -> None:
    alice = await signup(stack.auth)
    ev = failed(alice)
    await stack.fanout.deliver(ev)
    await stack.fanout.deliver(ev)
    rows = (await db.execute(select(NotificationEvent).where(NotificationEvent.id == ev.id))).all()
    assert len(rows) == 1 and rows[0].recipients == 1
    assert rows[0].occurred_at <= datetime.now(UTC)
