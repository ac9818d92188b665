"""The live inbox: a new notification and the unread count arrive on the SSE stream as they
happen, and a client reconnecting with Last-Event-ID gets what it missed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import cast

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.identity import Principal
from libs.notify import Event, NewSignIn, make_event
from libs.settings import DEV_INTERNAL_SECRET
from libs.testing import auth_headers
from services.jobs.app import build_app
from services.jobs.notifications.fanout import Fanout, Recipients
from services.jobs.notifications.inbox import inbox_key
from services.jobs.notifications.models import Notification, NotificationEvent
from services.jobs.settings import JobsSettings
from tests.jobs.jobs.test_stream import Frames
from tests.support.servers import serve

USER = uuid.uuid4()


@pytest.fixture
async def committed(engine: AsyncEngine) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Committed data (the app reads it with its own engine), USER's deleted afterwards."""
    factory = async_sessionmaker(engine, expire_on_commit=False)
    yield factory
    users = [USER]
    async with session_scope(factory) as session:
        await session.execute(delete(Notification).where(Notification.user_id.in_(users)))
        await session.execute(delete(NotificationEvent).where(NotificationEvent.user_id.in_(users)))


@pytest.fixture
async def live() -> AsyncIterator[httpx.AsyncClient]:
    server = await serve(build_app(JobsSettings(sse_heartbeat_seconds=0.2)))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            yield c
    finally:
        await server.stop()


def sign_in(user: uuid.UUID) -> Event:
    return make_event(
        "security.new_sign_in",
        NewSignIn(session_id=uuid.uuid4(), user_agent="curl", signed_in_at=datetime.now(UTC)),
        user_id=user,
        source="auth",
    )


async def test_new_notifications_and_counts_are_pushed_and_resumed(
    redis: Redis, committed: async_sessionmaker[AsyncSession], live: httpx.AsyncClient
) -> None:
    user = USER
    me = Principal(user_id=user, org_id=uuid.uuid4(), roles=["owner"], scopes=["jobs:read"])
    h = auth_headers(me)
    # auth's contact route, standing in (the user has no address: in-app only)
    contact = {"user_id": str(user), "email": None, "display_name": ""}
    auth = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=contact))
    )
    fanout = Fanout(committed, redis, Recipients(auth, "http://auth", DEV_INTERNAL_SECRET))
    async with live.stream("GET", "/v1/notifications/events", headers=h) as resp:
        assert resp.status_code == 200
        frames = Frames(resp)
        assert (await frames.until("count"))["data"] == {"unread": 0}
        ev = sign_in(user)
        assert await fanout.deliver(ev) == 1
        pushed = await frames.until("notification")
        assert pushed["data"]["kind"] == "security.new_sign_in"
        assert pushed["data"]["event_id"] == str(ev.id)
        count = await frames.until("count")
        assert count["data"] == {"unread": 1} and count["id"] == pushed["id"]
        resume_from = count["id"]
        resp2 = await live.post(f"/v1/notifications/{pushed['data']['id']}/read", headers=h)
        assert resp2.status_code == 200
        assert (await frames.until("count"))["data"] == {"unread": 0}

    missed = sign_in(user)
    await fanout.deliver(missed)
    resumed = {**h, "Last-Event-ID": resume_from}
    async with live.stream("GET", "/v1/notifications/events", headers=resumed) as resp:
        frames = Frames(resp)
        got = await asyncio.wait_for(frames.until("notification"), 10)
        assert got["data"]["event_id"] == str(missed.id)
    await redis.delete(inbox_key(user))


async def test_a_stream_ends_after_its_lifetime_for_the_client_to_reconnect() -> None:
    server = await serve(
        build_app(JobsSettings(sse_heartbeat_seconds=0.1, notification_stream_max_s=0.5))
    )
    me = Principal(user_id=uuid.uuid4(), org_id=uuid.uuid4(), roles=["owner"], scopes=["jobs:read"])
    try:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as c,
            c.stream("GET", "/v1/notifications/events", headers=auth_headers(me)) as resp,
        ):
            body = (await asyncio.wait_for(resp.aread(), 10)).decode()
    finally:
        await server.stop()
    assert body.startswith('event: count\ndata: {"unread":0}')


async def test_the_stream_counts_new_notifications_without_reading_the_count_each_time(
    redis: Redis,
) -> None:
    # the count is read when the stream starts and on a read/mark/archive ("changed"); a new
    # notification adds one: reading it afresh per batch scanned every unread notification of
    # the user each time (PostgreSQL's largest cost in the fan-out bench)
    from services.jobs.notifications.inbox import inbox_events, publish

    user, org = uuid.uuid4(), uuid.uuid4()
    in_db = 5
    reads = 0

    async def unread() -> int:
        nonlocal reads
        reads += 1
        return in_db

    stream = cast(
        AsyncGenerator[bytes, None],
        inbox_events(redis, user, org, unread, last_event_id=None, heartbeat_s=5, max_s=30),
    )
    try:
        frames = []

        async def next_count() -> int:
            while True:
                frame = (await anext(stream)).decode()
                frames.append(frame)
                if "\nevent: count\n" in "\n" + frame:
                    return int(frame.split('"unread":')[1].split("}")[0])

        assert await next_count() == 5 and reads == 1
        note = {"id": "x"}
        await publish(redis, [(user, org, "notification", note)] * 3)
        assert await next_count() == 8
        await publish(redis, [(user, None, "notification", note)])  # about the account
        await publish(redis, [(user, uuid.uuid4(), "notification", note)])  # another org's
        assert await next_count() == 9
        assert reads == 1
        in_db = 2  # the user read some: the count is read again
        await publish(redis, [(user, org, "changed", None)])
        assert await next_count() == 2 and reads == 2
        assert sum("\nevent: notification\n" in f for f in frames) == 4
    finally:
        await stream.aclose()
        await redis.delete(inbox_key(user))
