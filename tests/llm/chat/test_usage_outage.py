"""Usage events survive a Redis outage: kept in memory, moved to the ``llm.usage_outbox`` table
past ``usage_max_pending`` or at shutdown, and queued to billing once Redis is back, where each
is recorded exactly once (issue 4: "none is lost or counted twice")."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import RedisSettings
from arq.worker import Worker
from fastapi import FastAPI
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from libs.embedded import EmbeddedRedis
from libs.identity import Principal
from libs.testing import Infra, auth_headers, principal, running
from libs.usage import USAGE_STREAM, UsageOutbox, message_from_json
from libs.worker import settings_for as worker_settings_for
from services.billing.models import UsageEventRecord
from services.llm.app import build_app
from services.llm.chat.service import ChatService
from tests.support.fakes import openai_fake
from tests.support.faults.redis_restart import own_redis, start, stop
from tests.support.ledger import drain_stream
from tests.support.stacks.llm import KEY_ENV, Upstream, routing, settings_for

MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    with own_redis(tmp_path / "redis") as server:
        yield server


def llm_app(tmp_path: Path, primary: Upstream, backup: Upstream, redis_url: str) -> FastAPI:
    settings = settings_for(
        tmp_path,
        routing(primary, backup),
        redis_url=redis_url,
        usage_max_pending=3,
        # no breaker traffic on the dead Redis to wait out in these tests
        breaker_shared=False,
    )
    return build_app(settings)


async def chat(app: FastAPI, p: Principal, n: int) -> list[str]:
    """``n`` chat completions through the app; their request ids (the usage events' ids)."""
    import httpx

    ids = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://llm.test") as http:
        for _ in range(n):
            resp = await http.post(
                "/v1/chat/completions",
                json={"model": "default", "messages": MESSAGES},
                headers=auth_headers(p),
            )
            assert resp.status_code == 200, resp.text
            ids.append(resp.json()["id"])
    return ids


async def outbox_rows(engine: AsyncEngine, org: uuid.UUID | None) -> int:
    async with engine.connect() as conn:
        stmt = text("SELECT count(*) FROM llm.usage_outbox WHERE job->'event'->>'org_id' = :org")
        return int((await conn.scalar(stmt, {"org": str(org)})) or 0)


async def record_usage(redis_url: str, db: AsyncConnection) -> dict[str, int]:
    """Run billing's ledger over the usage stream; the recorded events of every request id."""
    factory = async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    client = Redis.from_url(redis_url)
    try:
        await drain_stream(client, factory)
    finally:
        await client.aclose()
    return await recorded(factory)


async def recorded(factory: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with factory() as s:
        stmt = select(UsageEventRecord.request_id, func.count()).group_by(
            UsageEventRecord.request_id
        )
        return {rid: int(n) for rid, n in (await s.execute(stmt)).all()}


async def wait_for(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
def fake_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)


@pytest.mark.usefixtures("fake_key")
async def test_usage_made_during_a_long_redis_outage_reaches_billing_once(
    infra: Infra,
    engine: AsyncEngine,
    db: AsyncConnection,
    tmp_path: Path,
    primary: Upstream,
    backup: Upstream,
    server: EmbeddedRedis,
) -> None:
    p = principal(key_id=uuid.uuid4())
    app = llm_app(tmp_path, primary, backup, server.url)
    async with running(app):
        service: ChatService = app.state.llm
        before = await chat(app, p, 1)
        await service.drain()

        down_at = await stop(server)
        during = await chat(app, p, 6)  # answered: usage waits, it does not fail the call
        await asyncio.sleep(0.5)
        # 3 kept in memory at most; past that they went to the outbox table
        assert await outbox_rows(engine, p.org_id) >= 3
        assert service.usage.pending <= 3
        pending = REGISTRY.get_sample_value(
            "aistack_usage_events_pending", {"service": "llm", "store": "outbox"}
        )
        assert pending is not None and pending >= 3
        # longer than the old retry budget (5 tries, ~6 s) that then dropped the events
        await asyncio.sleep(max(0.0, 11 - (time.monotonic() - down_at)))
        late = await chat(app, p, 1)
        await start(server)

        await asyncio.wait_for(service.drain(), 30)
        assert service.usage.pending == 0
        assert await outbox_rows(engine, p.org_id) == 0

    counts = await record_usage(server.url, db)
    wanted = before + during + late
    assert len(set(wanted)) == 8
    assert {rid: counts.get(rid, 0) for rid in wanted} == dict.fromkeys(wanted, 1)


@pytest.mark.usefixtures("fake_key")
async def test_usage_of_an_llm_stopped_during_the_outage_is_delivered_after_restart(
    infra: Infra,
    engine: AsyncEngine,
    db: AsyncConnection,
    tmp_path: Path,
    primary: Upstream,
    backup: Upstream,
    server: EmbeddedRedis,
) -> None:
    p = principal(key_id=uuid.uuid4())
    app = llm_app(tmp_path, primary, backup, server.url)
    async with running(app):
        await stop(server)
        during = await chat(app, p, 2)
        assert await outbox_rows(engine, p.org_id) == 0  # in memory: under usage_max_pending
    # graceful shutdown: what Redis did not take is in the table now
    assert await outbox_rows(engine, p.org_id) == 2
    async with engine.connect() as conn:
        stmt = text("SELECT job FROM llm.usage_outbox WHERE job->'event'->>'org_id' = :org")
        parked = [message_from_json(r) for r in (await conn.scalars(stmt, {"org": str(p.org_id)}))]

    await start(server)
    # a restarted llm: the app itself never reads the table (no SQLAlchemy on the chat path);
    # the llm worker replays it
    restarted = llm_app(tmp_path, primary, backup, server.url)
    async with running(restarted):
        after = await chat(restarted, p, 1)
        await restarted.state.llm.drain()
    worker = Worker(
        **worker_settings_for(
            "llm",
            redis_settings=RedisSettings.from_dsn(server.url),
            handle_signals=False,
            poll_delay=0.05,
        )
    )
    run = asyncio.create_task(worker.async_run())
    try:

        async def replayed() -> bool:
            return await outbox_rows(engine, p.org_id) == 0

        await wait_for(replayed, 20, "the llm worker to replay the outbox")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await worker.close()

    counts = await record_usage(server.url, db)
    wanted = during + after
    assert {rid: counts.get(rid, 0) for rid in wanted} == dict.fromkeys(wanted, 1)

    # the same events replayed again (a replay cut short, two llm processes): collapsed
    outbox = UsageOutbox("llm", lambda: async_sessionmaker(engine, expire_on_commit=False))
    await outbox.put(parked)
    client = Redis.from_url(server.url)
    try:
        assert await outbox.replay(client) == 2
        assert await client.xlen(USAGE_STREAM) == 2  # sent again: the ledger collapses them
    finally:
        await client.aclose()
    counts = await record_usage(server.url, db)
    assert {rid: counts.get(rid, 0) for rid in wanted} == dict.fromkeys(wanted, 1)
