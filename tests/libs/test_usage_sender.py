"""libs.usage.UsageSender at its edges: a Redis that hangs at shutdown, an outbox that is
unavailable too."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from libs.embedded import EmbeddedRedis
from libs.redis import make_redis
from libs.usage import UsageEvent, UsageOutbox, UsageSender, prepare_usage
from tests.redis_outage import own_redis, start, stop


def events(org: uuid.UUID, n: int) -> list[UsageEvent]:
    return [
        UsageEvent(request_id=uuid.uuid4().hex, org_id=org, model="m", provider="p")
        for _ in range(n)
    ]


async def parked(engine: AsyncEngine, org: uuid.UUID) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT job_id FROM llm.usage_outbox WHERE job->'args'->0->>'org_id' = :o"),
            {"o": str(org)},
        )
        return {r[0] for r in rows}


async def clear(engine: AsyncEngine, ids: set[str]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM llm.usage_outbox WHERE job_id = ANY(:ids)"), {"ids": list(ids)}
        )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    with own_redis(tmp_path / "redis") as server:
        yield server


async def test_shutdown_on_a_hung_redis_parks_the_events_in_the_outbox(
    infra: object, engine: AsyncEngine
) -> None:
    org = uuid.uuid4()
    with socket.socket() as hung_server:
        hung_server.bind(("127.0.0.1", 0))
        hung_server.listen(16)  # accepts, never answers
        hung = make_redis(f"redis://127.0.0.1:{hung_server.getsockname()[1]}/0")
        outbox = UsageOutbox("llm", lambda: async_sessionmaker(engine, expire_on_commit=False))
        sender = UsageSender("test", lambda: hung, outbox=outbox, close_timeout_s=0.5)
        evs = events(org, 3)
        for ev in evs:
            sender.add(prepare_usage(ev))
        await asyncio.sleep(0.2)  # the send is under way, waiting on the hung server
        started = time.monotonic()
        await sender.close()
        assert time.monotonic() - started < 3  # not the 5 s socket timeout, nor forever
        await hung.aclose()
    ids = await parked(engine, org)
    assert ids == {ev.job_id for ev in evs}
    assert sender.pending == 0
    await clear(engine, ids)


async def test_events_stay_in_memory_while_the_outbox_is_unavailable_too(
    server: EmbeddedRedis,
) -> None:
    org = uuid.uuid4()
    client = Redis.from_url(server.url)
    # no database at all: past max_pending they cannot move, and must not be dropped
    sender = UsageSender(
        "test",
        lambda: client,
        outbox=UsageOutbox("llm", lambda: None),
        max_pending=2,
        retry_max_s=0.5,
    )
    await stop(server)
    evs = events(org, 5)
    for ev in evs:
        sender.add(prepare_usage(ev))
    await asyncio.sleep(1.5)
    assert sender.pending == 5
    await start(server)
    await asyncio.wait_for(sender.drain(), 10)
    queued = {m.decode() for m in await client.zrange("aistack:queue:billing", 0, -1)}
    assert queued == {ev.job_id for ev in evs}
    await client.aclose()
