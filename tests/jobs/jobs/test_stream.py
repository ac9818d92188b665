"""A job's progress stream is pushed as the job reports it (no polling of its record), resumes
from Last-Event-ID, and shows a parent's children's aggregate progress."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.identity import Principal
from libs.queue import JobEvent, emit_event
from libs.queue.names import WATCH_KEY_PREFIX
from libs.testing import auth_headers, principal
from services.jobs.app import build_app
from services.jobs.jobs.repository import JobRepository
from services.jobs.models import Job
from services.jobs.settings import JobsSettings
from tests.support.servers import serve

SVC = "streamtest"
T0 = datetime.now(UTC)


@pytest.fixture
async def committed(engine: AsyncEngine) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Committed data: the app reads it with its own engine."""
    factory = async_sessionmaker(engine, expire_on_commit=False)
    yield factory
    async with session_scope(factory) as session:
        await session.execute(delete(Job).where(Job.service == SVC))


@pytest.fixture
async def live() -> AsyncIterator[httpx.AsyncClient]:
    """The app on a real server (httpx's ASGI transport buffers a response whole); the record
    is read again only after 60 quiet seconds: what arrives here was pushed."""
    app = build_app(JobsSettings(sse_recheck_seconds=60, sse_heartbeat_seconds=0.1))
    server = await serve(app)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            yield c
    finally:
        await server.stop()


def event(job_id: str, status: str, p: Principal, s: float, **kw: Any) -> JobEvent:
    return JobEvent(
        job_id=job_id,
        service=SVC,
        function="f",
        status=status,
        org_id=str(p.org_id),
        ts=T0 + timedelta(seconds=s),
        **kw,
    )


async def record(factory: async_sessionmaker[AsyncSession], *events: JobEvent) -> None:
    async with session_scope(factory) as session:
        for ev in events:
            await JobRepository(session).apply_event(ev)


async def watched(redis: Redis, job_id: str) -> None:
    for _ in range(500):
        if await redis.exists(WATCH_KEY_PREFIX + job_id):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the stream never began watching the job")


class Frames:
    """Reads an SSE body frame by frame."""

    def __init__(self, resp: httpx.Response) -> None:
        self.lines = resp.aiter_lines()

    async def next(self) -> dict[str, Any]:
        frame: dict[str, Any] = {}
        async for line in self.lines:
            if not line:
                if frame:
                    return frame
                continue
            if line.startswith(":"):
                frame.setdefault("comments", 0)
                frame["comments"] += 1
                continue
            name, _, value = line.partition(": ")
            frame[name] = json.loads(value) if name == "data" else value
        return frame

    async def until(self, event: str) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.next(), 10)
            if frame.get("event") == event or not frame:
                return frame


async def test_progress_is_pushed_until_the_job_ends(
    redis: Redis, committed: async_sessionmaker[AsyncSession], live: httpx.AsyncClient
) -> None:
    alice = principal()
    jid = f"live-{uuid.uuid4().hex}"
    await record(committed, event(jid, "running", alice, 0, progress=10))
    seen: list[dict[str, Any]] = []
    async with live.stream("GET", f"/v1/jobs/{jid}/events", headers=auth_headers(alice)) as resp:
        assert resp.status_code == 200
        frames = Frames(resp)
        first = await frames.until("progress")
        assert (first["data"]["status"], first["data"]["progress"]) == ("running", 10)
        await watched(redis, jid)
        await emit_event(redis, event(jid, "progress", alice, 1, progress=60, message="halfway"))
        await asyncio.sleep(0.3)  # quiet: keep-alive comments meanwhile
        await emit_event(redis, event(jid, "succeeded", alice, 2))
        while True:
            frame = await asyncio.wait_for(frames.next(), 10)
            seen.append(frame)
            if frame.get("event") == "end" or not frame:
                break
    progress = [f["data"] for f in seen if f.get("event") == "progress"]
    assert [(p["status"], p["progress"], p["message"]) for p in progress] == [
        ("running", 60, "halfway"),
        ("succeeded", 100, "halfway"),
    ]
    assert all(f.get("id") for f in seen if f.get("event") == "progress")
    assert seen[-1]["data"] == {"id": jid, "status": "succeeded"}
    assert any(f.get("comments") for f in seen)


async def test_a_client_reconnecting_with_last_event_id_gets_what_it_missed(
    redis: Redis, committed: async_sessionmaker[AsyncSession], live: httpx.AsyncClient
) -> None:
    alice = principal()
    jid = f"resume-{uuid.uuid4().hex}"
    await record(committed, event(jid, "running", alice, 0, progress=5))
    async with live.stream("GET", f"/v1/jobs/{jid}/events", headers=auth_headers(alice)) as resp:
        frames = Frames(resp)
        await frames.until("progress")
        await watched(redis, jid)
        await emit_event(redis, event(jid, "progress", alice, 1, progress=20, message="a"))
        seen = await frames.until("progress")
        last_id = seen["id"]
    # gone; meanwhile the job went on (still watched: the watch outlives the connection)
    await emit_event(redis, event(jid, "progress", alice, 2, progress=40, message="b"))
    await emit_event(redis, event(jid, "progress", alice, 3, progress=80, message="c"))
    headers = {**auth_headers(alice), "last-event-id": last_id}
    async with live.stream("GET", f"/v1/jobs/{jid}/events", headers=headers) as resp:
        frames = Frames(resp)
        resumed = await frames.until("progress")
        # what it missed, not the record's snapshot first
        assert resumed["data"]["progress"] in (40, 80) and resumed["id"] > last_id
        await emit_event(redis, event(jid, "succeeded", alice, 4))
        assert (await frames.until("end"))["data"]["status"] == "succeeded"
    # another organization cannot follow it
    other = await live.get(f"/v1/jobs/{jid}/events", headers=auth_headers(principal()))
    assert other.status_code == 404


async def test_a_parent_streams_its_childrens_aggregate_progress(
    redis: Redis, committed: async_sessionmaker[AsyncSession], live: httpx.AsyncClient
) -> None:
    alice = principal()
    parent = f"parent-{uuid.uuid4().hex}"
    kids = [f"kid-{uuid.uuid4().hex}" for _ in range(2)]
    await record(
        committed,
        event(parent, "running", alice, 0, progress=0),
        *(event(k, "queued", alice, 0, parent_id=parent) for k in kids),
    )
    async with live.stream("GET", f"/v1/jobs/{parent}/events", headers=auth_headers(alice)) as resp:
        frames = Frames(resp)
        await frames.until("progress")
        first = await frames.until("children")
        assert first["data"] == {"total": 2, "by_status": {"queued": 2}, "progress": 0.0}
        await watched(redis, parent)
        await emit_event(redis, event(kids[0], "succeeded", alice, 1, parent_id=parent))
        agg = await frames.until("children")
        assert agg["data"]["by_status"] == {"succeeded": 1, "queued": 1}
        assert agg["data"]["progress"] == 50.0
        await emit_event(redis, event(parent, "succeeded", alice, 2))
        assert (await frames.until("end"))["data"]["status"] == "succeeded"
    got = await live.get(f"/v1/jobs/{parent}", headers=auth_headers(alice))
    assert got.json()["children"]["total"] == 2
