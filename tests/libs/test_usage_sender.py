"""libs.usage.UsageSender at its edges: a Redis that hangs at shutdown, an outbox that is
unavailable too."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from opentelemetry.context import attach, detach
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from libs.context import request_id_var
from libs.embedded import EmbeddedRedis
from libs.redis import make_redis
from libs.telemetry import extract_trace_context
from libs.usage import USAGE_STREAM, UsageEvent, UsageOutbox, UsageSender, prepare_usage
from tests.support.faults.redis_restart import own_redis, start, stop


def events(org: uuid.UUID, n: int) -> list[UsageEvent]:
    return [
        UsageEvent(request_id=uuid.uuid4().hex, org_id=org, model="m", provider="p")
        for _ in range(n)
    ]


async def parked(engine: AsyncEngine, org: uuid.UUID) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT job_id FROM llm.usage_outbox WHERE job->'event'->>'org_id' = :o"),
            {"o": str(org)},
        )
        return {r[0] for r in rows}


async def stream_keys(client: Redis) -> list[str]:
    """The keys of the events on the usage stream, in order."""
    out = []
    for _, fields in await client.xrange(USAGE_STREAM):
        event = orjson.loads(fields[b"e"])
        out.append(f"usage:{event['kind']}:{event['request_id']}")
    return out


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
    assert await stream_keys(client) == [ev.key for ev in evs]
    await client.aclose()


async def test_add_event_prepares_in_the_callers_context_and_close_sends_it(
    server: EmbeddedRedis,
) -> None:
    """``add_event`` prepares the event after the caller's step (off the answer's path), with
    the caller's request id, and an event added just before shutdown is still sent."""
    client = Redis.from_url(server.url)
    sender = UsageSender("test", lambda: client)
    org = uuid.uuid4()
    (ev,) = events(org, 1)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    token = request_id_var.set("req-context-check")
    ctx = attach(extract_trace_context({"traceparent": traceparent}))
    try:
        sender.add_event(ev)
        assert sender.pending == 0 and sender.busy  # scheduled, not prepared yet
    finally:
        detach(ctx)
        request_id_var.reset(token)
    await sender.close()  # right away: the scheduled preparation runs, then the send
    assert sender.pending == 0
    ((_, fields),) = await client.xrange(USAGE_STREAM)
    assert fields[b"rid"] == b"req-context-check"
    assert orjson.loads(fields[b"e"])["request_id"] == ev.request_id
    await client.aclose()
