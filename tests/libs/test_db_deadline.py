"""A hung PostgreSQL (it accepts connections and never answers) must not hang the services.

PostgreSQL is hung the way a client sees it: the service's engine goes through a proxy
(tests/support/faults/postgres.py) that stops passing bytes, while the shared test
PostgreSQL runs on. Every wait on it has a deadline (libs/db.py:make_engine,
``DB_COMMAND_TIMEOUT_SECONDS``): past it, requests answer 503 service_unavailable (one
warning line, no traceback) and background loops retry later, and all of it works again
once PostgreSQL answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.db import make_engine, make_session_factory
from libs.queue import emit_event
from libs.storage_errors import database_timeout, outage_of
from libs.testing import Infra, auth_headers, client_for, principal
from services.jobs.jobs.recorder import EventConsumer
from services.jobs.models import Job
from tests.support.faults.outages import assert_unavailable
from tests.support.faults.postgres import HangingProxy, engine_through, jobs_app_through
from tests.support.faults.redis import eventually
from tests.support.job_events import usage_job
from tests.support.logs import Records, recording
from tests.support.stacks.llm_store import store_app

DEADLINE_S = 0.5
# the deadline, then up to 2 s for SQLAlchemy's graceful close of the dropped connection
# (asyncpg's own close timeout, which a hung server always runs out), then slack for a
# busy machine
ANSWER_WITHIN_S = DEADLINE_S + 2 + 1.5
# how often the guard probes a hung PostgreSQL (DB_GUARD_RETRY_SECONDS)
GUARD_RETRY_S = 0.2


@pytest.fixture
async def hung_engine(proxy: HangingProxy) -> AsyncIterator[AsyncEngine]:
    # the deadlines alone; the guard that skips a hung PostgreSQL after the first one passes
    # is tests/libs/test_db_guard.py's
    async with engine_through(
        proxy, command_timeout_s=DEADLINE_S, pool_timeout_s=DEADLINE_S, guard_retry_s=None
    ) as engine:
        yield engine


async def _timed(coro: object) -> tuple[BaseException | None, float]:
    """Run ``coro``; the error it raised (None) and how long it took. Bounded, so a
    regression (an endless wait) fails the test instead of hanging it."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(15):
            await coro  # type: ignore[misc]
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


async def test_a_statement_past_the_deadline_is_a_database_outage_and_its_connection_dropped(
    proxy: HangingProxy, hung_engine: AsyncEngine
) -> None:
    async with hung_engine.connect() as conn:
        assert await conn.scalar(text("SELECT 1")) == 1
        proxy.hang()
        exc, took = await _timed(conn.scalar(text("SELECT 2")))
        assert isinstance(exc, TimeoutError), exc
        assert took < ANSWER_WITHIN_S
        assert outage_of(exc) == "database"
        # dropped, not given back to the pool to be used again
        assert conn.invalidated

    # a pooled connection: its pre-ping has the same deadline, and is an outage too
    exc, took = await _timed(_select_one(hung_engine))
    assert isinstance(exc, TimeoutError) and outage_of(exc) == "database", exc
    assert took < ANSWER_WITHIN_S
    # a new connection: the connect has it too
    exc, took = await _timed(_select_one(hung_engine))
    assert isinstance(exc, TimeoutError) and outage_of(exc) == "database", exc
    assert took < ANSWER_WITHIN_S

    # answering again: the same engine works at once, nothing is left checked out
    proxy.resume()
    exc, took = await _timed(_select_one(hung_engine))
    assert exc is None and took < 1.0, exc
    assert hung_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def _select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT 1")) == 1


async def test_other_timeouts_are_not_the_database(infra: Infra) -> None:
    assert outage_of(TimeoutError()) is None

    async def slow() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    with pytest.raises(TimeoutError) as raised:
        await slow()
    assert outage_of(raised.value) is None
    # not even inside a transaction (SQLAlchemy's code is then on the way up)
    engine = make_engine(infra.database_url)
    try:
        with pytest.raises(TimeoutError) as raised:
            async with engine.begin() as conn:
                await conn.execute(text("SELECT 1"))
                await slow()
        assert not database_timeout(raised.value)
        assert outage_of(raised.value) is None
    finally:
        await engine.dispose()


async def test_a_request_while_postgres_hangs_is_503_within_the_deadline_then_200(
    proxy: HangingProxy,
) -> None:
    # the deadlines come from the settings (DB_COMMAND_TIMEOUT_SECONDS, DB_POOL_TIMEOUT_SECONDS)
    app = jobs_app_through(proxy, deadline_s=DEADLINE_S, guard_retry_s=GUARD_RETRY_S)
    who = auth_headers(principal(scopes=["jobs:read"]))
    async with client_for(app) as c:
        assert (await c.get("/v1/jobs", headers=who)).status_code == 200
        proxy.hang()
        with recording() as logs:
            # a pooled connection's pre-ping waits the deadline; then the guard refuses at once
            for _ in range(2):
                started = time.monotonic()
                async with asyncio.timeout(15):
                    resp = await c.get("/v1/jobs", headers=who)
                assert time.monotonic() - started < ANSWER_WITHIN_S
                assert_unavailable(resp, "database")
        # one warning line for the request that met the deadline (the guard's refusal of the
        # next is in the guard's own line, not one per request), no traceback, no error
        warnings = [r for r in logs.at_least(logging.WARNING) if r.name == "aistack.storage_errors"]
        assert len(warnings) == 1, [r.getMessage() for r in logs.records]
        assert "database unavailable" in warnings[0].getMessage()
        assert "DB_COMMAND_TIMEOUT_SECONDS" in warnings[0].getMessage()
        guard_lines = [r for r in logs.at_least(logging.WARNING) if r.name == "aistack.db"]
        assert len(guard_lines) == 1 and "DB_COMMAND_TIMEOUT_SECONDS" in guard_lines[0].getMessage()
        assert not logs.at_least(logging.ERROR)
        assert not any(r.exc_info for r in logs.records)

        proxy.resume()

        async def answers() -> bool:  # once the guard's probe sees it (libs/db_guard.py)
            return (await c.get("/v1/jobs", headers=who)).status_code == 200

        await eventually(answers, within=GUARD_RETRY_S + 3)


async def test_the_llm_hot_route_answers_openai_shaped_503_while_postgres_hangs(
    proxy: HangingProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The llm builds its engine lazily (libs/db.py) and answers errors of its hot
    chat route itself (libs.storage_errors.storage_error_response): a stored prompt to
    render needs the database."""
    monkeypatch.setenv("DATABASE_URL", proxy.url)
    monkeypatch.setenv("DB_COMMAND_TIMEOUT_SECONDS", str(DEADLINE_S))
    monkeypatch.setenv("DB_GUARD_RETRY_SECONDS", str(GUARD_RETRY_S))
    app = store_app(tmp_path, monkeypatch)
    p = principal()
    async with client_for(app) as c:
        version = {
            "messages": [{"role": "user", "content": "Summarize: {{ text }}"}],
            "model": "default",
            "labels": ["production"],
        }
        body = {"name": "summarize", "description": "d", "version": version}
        resp = await c.post("/v1/prompts", json=body, headers=auth_headers(p))
        assert resp.status_code == 201, resp.text
        proxy.hang()
        started = time.monotonic()
        async with asyncio.timeout(15):
            resp = await c.post(
                "/v1/chat/completions",
                json={"model": "default", "prompt": {"name": "summarize", "label": "production"}},
                headers=auth_headers(p),
            )
        assert time.monotonic() - started < ANSWER_WITHIN_S
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "2"
        error = resp.json()["error"]
        assert error["code"] == "service_unavailable" and error["type"] == "api_error"
        async with asyncio.timeout(15):
            resp = await c.get("/v1/prompts", headers=auth_headers(p))
        assert_unavailable(resp, "database")
        proxy.resume()

        async def answers() -> bool:  # once the guard's probe sees it (libs/db_guard.py)
            return (await c.get("/v1/prompts", headers=auth_headers(p))).status_code == 200

        await eventually(answers, within=GUARD_RETRY_S + 3)


async def test_the_job_events_consumer_keeps_going_through_a_hang(
    proxy: HangingProxy, hung_engine: AsyncEngine, engine: AsyncEngine, redis: Redis
) -> None:
    """One warning line per try while PostgreSQL hangs (not a traceback, nothing set aside
    as a poison event), and the events sent meanwhile are applied once it answers."""
    consumer = EventConsumer(redis, make_session_factory(hung_engine), consumer="t", block_ms=100)
    direct = async_sessionmaker(engine, expire_on_commit=False)
    run = uuid.uuid4().hex[:8]

    async def applied(job_id: str) -> bool:
        async with direct() as s:
            job = await s.scalar(select(Job).where(Job.id == job_id))
        return job is not None and job.status == "succeeded"

    with recording() as logs:
        task = asyncio.create_task(consumer.run_forever())
        try:
            for ev in usage_job(f"before-{run}", 0):
                await emit_event(redis, ev)
            await eventually(lambda: applied(f"before-{run}"))

            proxy.hang()
            for ev in usage_job(f"during-{run}", 0):
                await emit_event(redis, ev)

            async def tried_twice() -> bool:
                return len(_consumer_warnings(logs)) >= 2

            await eventually(tried_twice, within=15)
            assert not task.done()  # it runs until cancelled

            proxy.resume()
            await eventually(lambda: applied(f"during-{run}"), within=15)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    tries = _consumer_warnings(logs)
    assert all("PostgreSQL unreachable" in r.getMessage() for r in tries), tries
    assert not logs.at_least(logging.ERROR), [r.getMessage() for r in logs.at_least(logging.ERROR)]
    assert not any(r.exc_info for r in logs.records)


def _consumer_warnings(logs: Records) -> list[logging.LogRecord]:
    return [r for r in logs.at_least(logging.WARNING) if "events consumer" in r.getMessage()]


async def test_workers_take_their_deadlines_from_the_settings(infra: Infra) -> None:
    from libs.settings import ServiceSettings
    from libs.worker import worker_settings

    settings = ServiceSettings(
        database_url=infra.database_url, db_command_timeout_seconds=7.5, db_pool_timeout_seconds=2.5
    )
    opts = worker_settings(
        "deadlines",
        [],
        database_url=infra.database_url,
        redis_url=infra.redis_url,
        settings=settings,
    )
    ctx: dict[str, object] = {}
    await opts["on_startup"](ctx)
    engine = ctx["db"].engine  # type: ignore[attr-defined]
    assert isinstance(engine, AsyncEngine)
    try:
        assert engine.pool.timeout() == 2.5  # type: ignore[attr-defined]
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert raw.driver_connection._config.command_timeout == 7.5  # type: ignore[union-attr]
    finally:
        await opts["on_shutdown"](ctx)


async def test_the_revocation_replay_keeps_going_through_a_hang(
    proxy: HangingProxy, hung_engine: AsyncEngine, engine: AsyncEngine, redis: Redis
) -> None:
    """A session revocation owed to the gateways while PostgreSQL hangs goes out once it
    answers: the replay's tries end at the deadline instead of waiting for ever."""
    from sqlalchemy import delete

    from services.auth.models import PendingRevocation
    from services.auth.sessions.revocations import SESSION_REVOKED_PREFIX, record, replay_forever

    direct = async_sessionmaker(engine, expire_on_commit=False)
    sid = uuid.uuid4()
    async with direct() as session:
        await record(session, [sid], datetime.now(UTC), 960)
        await session.commit()

    async def announced() -> bool:
        return bool(await redis.exists(f"{SESSION_REVOKED_PREFIX}{sid}"))

    hung_factory = make_session_factory(hung_engine)
    tries = 0

    def counted() -> AsyncSession:
        nonlocal tries
        tries += 1
        return hung_factory()

    await _select_one(hung_engine)  # a pooled connection: the hang meets its pre-ping
    proxy.hang()
    task = asyncio.create_task(replay_forever(counted, redis, interval_s=0.2, idle_s=0.2))
    try:

        async def tried_again() -> bool:
            return tries >= 3

        await eventually(tried_again, within=10)
        assert not await announced() and not task.done()
        proxy.resume()
        await eventually(announced, within=10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with direct() as session:
            await session.execute(
                delete(PendingRevocation).where(PendingRevocation.session_id == sid)
            )
            await session.commit()


async def test_billing_records_usage_again_later_when_postgres_hangs(
    proxy: HangingProxy, hung_engine: AsyncEngine, redis: Redis
) -> None:
    """A usage event billing could not store because PostgreSQL hung is run again later
    (arq's Retry, backing off), not failed for good: the usage would be lost."""
    from arq.worker import Retry

    from libs.usage import UsageEvent
    from services.billing.tasks import record_usage

    usage = UsageEvent(request_id=uuid.uuid4().hex, org_id=uuid.uuid4(), model="m", provider="p")
    event = usage.model_dump(mode="json")

    def ctx(attempt: int) -> dict[str, object]:
        factory = make_session_factory(hung_engine)
        return {"redis": redis, "db": factory, "job_id": "t", "job_try": attempt}

    await _select_one(hung_engine)
    proxy.hang()
    exc, took = await _timed(record_usage.coroutine(ctx(1), event))
    assert isinstance(exc, Retry), exc
    assert exc.defer_score == 5000 and took < ANSWER_WITHIN_S
    exc, _ = await _timed(record_usage.coroutine(ctx(4), event))
    assert isinstance(exc, Retry) and exc.defer_score == 40_000, exc
    proxy.resume()
    assert await record_usage.coroutine(ctx(5), event) == {"recorded": True}
    assert await record_usage.coroutine(ctx(6), event) == {"recorded": False}
