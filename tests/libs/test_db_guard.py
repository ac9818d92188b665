"""While PostgreSQL is hung, only the first request waits its deadline (libs/db_guard.py).

The first statement, pre-ping or connect of an engine that runs out of its deadline marks
PostgreSQL down for the process; until a background probe hears from it again, taking a
connection fails at once (a database outage: 503 with Retry-After), without opening one.
Hung here means black-holed by tests/support/faults/postgres.py's proxy; the shared
PostgreSQL runs on.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db import make_engine
from libs.db_guard import PROBE_TASK, DatabaseGuard, DatabaseUnavailable, guard_of
from libs.storage_errors import outage_of
from libs.testing import Infra, auth_headers, client_for, principal
from tests.support.faults.outages import assert_unavailable
from tests.support.faults.postgres import HangingProxy, engine_through, jobs_app_through
from tests.support.logs import recording

DEADLINE_S = 0.5
RETRY_S = 0.5
# the deadline, then up to 2 s for SQLAlchemy's graceful close of the dropped connection,
# then slack for a busy machine (tests/libs/test_db_deadline.py)
FIRST_WITHIN_S = DEADLINE_S + 2 + 1.5
# every later one: no network at all (a few ms; generous for a busy machine)
FAST_S = 0.1


@pytest.fixture
async def guarded(proxy: HangingProxy) -> AsyncIterator[AsyncEngine]:
    async with engine_through(
        proxy,
        application_name="guard-test",
        command_timeout_s=DEADLINE_S,
        pool_timeout_s=DEADLINE_S,
        guard_retry_s=RETRY_S,
    ) as engine:
        yield engine


def _guard(engine: AsyncEngine) -> DatabaseGuard:
    guard = guard_of(engine)
    assert guard is not None
    return guard


async def _select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT 1")) == 1


async def _timed(coro: object) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(15):
            await coro  # type: ignore[misc]
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def _metric(name: str, engine: str) -> float:
    value = REGISTRY.get_sample_value(name, {"engine": engine})
    return 0.0 if value is None else value


async def _eventually_up(guard: DatabaseGuard, within: float) -> float:
    started = time.monotonic()
    while not guard.up:
        assert time.monotonic() - started < within, "the probe did not mark it up"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("where", ["statement", "pre-ping", "connect"])
async def test_a_timeout_marks_it_down_and_later_checkouts_fail_at_once(
    proxy: HangingProxy, guarded: AsyncEngine, where: str
) -> None:
    guard = _guard(guarded)
    outages = _metric("aistack_database_outages_total", "guard-test")
    if where == "connect":
        proxy.hang()
        exc, took = await _timed(_select_one(guarded))
    else:
        await _select_one(guarded)  # one pooled connection
        if where == "statement":
            async with guarded.connect() as conn:
                proxy.hang()
                exc, took = await _timed(conn.scalar(text("SELECT 2")))
        else:
            proxy.hang()
            exc, took = await _timed(_select_one(guarded))
    assert isinstance(exc, TimeoutError) and outage_of(exc) == "database", exc
    assert took < FIRST_WITHIN_S
    assert not guard.up
    assert _metric("aistack_database_available", "guard-test") == 0
    assert _metric("aistack_database_outages_total", "guard-test") == outages + 1

    opened = proxy.connections
    for _ in range(20):
        exc, took = await _timed(_select_one(guarded))
        assert isinstance(exc, DatabaseUnavailable), exc
        assert outage_of(exc) == "database"
        assert took < FAST_S
    assert guard.refused == 20
    # refused before the pool: no connection opened, none checked out but the probe's
    assert guarded.pool.checkedout() <= 1  # type: ignore[attr-defined]
    assert proxy.connections - opened <= 1

    proxy.resume()
    assert await _eventually_up(guard, within=RETRY_S + 2 + 1.5) < RETRY_S + 2 + 1.5
    exc, took = await _timed(_select_one(guarded))
    assert exc is None, exc
    assert _metric("aistack_database_available", "guard-test") == 1
    assert guarded.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_request_while_postgres_hangs_waits_once_then_503_at_once_then_200(
    proxy: HangingProxy,
) -> None:
    app = jobs_app_through(proxy, deadline_s=DEADLINE_S, guard_retry_s=RETRY_S)
    who = auth_headers(principal(scopes=["jobs:read"]))
    async with client_for(app) as c:
        assert (await c.get("/v1/jobs", headers=who)).status_code == 200
        proxy.hang()
        with recording() as logs:
            started = time.monotonic()
            async with asyncio.timeout(15):
                resp = await c.get("/v1/jobs", headers=who)
            assert time.monotonic() - started < FIRST_WITHIN_S
            assert_unavailable(resp, "database")
            opened = proxy.connections
            for _ in range(10):
                started = time.monotonic()
                resp = await c.get("/v1/jobs", headers=who)
                assert time.monotonic() - started < FAST_S
                assert_unavailable(resp, "database")
            assert proxy.connections - opened <= 1  # the probe's, at most

            proxy.resume()
            started = time.monotonic()
            while (resp := await c.get("/v1/jobs", headers=who)).status_code == 503:
                assert time.monotonic() - started < RETRY_S + 2 + 1.5, "not back"
                await asyncio.sleep(0.05)
            assert resp.status_code == 200, resp.text
        # logged once going down and once coming back, with the refusals counted; no traceback
        guard_lines = [r.getMessage() for r in logs.records if r.name == "aistack.db"]
        assert len(guard_lines) == 2, guard_lines
        assert guard_lines[0].startswith("PostgreSQL unavailable")
        assert "PostgreSQL is back" in guard_lines[1]
        # the 10 above, and any while the probe had not yet seen it answer
        refused = re.search(r"; (\d+) connection checkouts were refused", guard_lines[1])
        assert refused is not None and int(refused[1]) >= 10, guard_lines[1]
        assert not any(r.exc_info for r in logs.records)


async def test_a_healthy_engine_runs_no_probe_and_no_extra_query(infra: Infra) -> None:
    from sqlalchemy import event

    engine = make_engine(infra.database_url, application_name="guard-healthy")
    statements: list[str] = []
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: statements.append(statement),
    )
    try:
        tasks = asyncio.all_tasks()
        for _ in range(20):
            await _select_one(engine)
        guard = _guard(engine)
        assert guard.up and guard.probes == 0 and guard.refused == 0
        assert statements == ["SELECT 1"] * 20  # no probe, nothing added per checkout
        assert not {t.get_name() for t in asyncio.all_tasks() - tasks} & {PROBE_TASK}
        assert _metric("aistack_database_available", "guard-healthy") == 1
    finally:
        await engine.dispose()


async def test_a_query_only_slow_closes_the_window_within_a_round_trip(infra: Infra) -> None:
    """A statement past its deadline on a PostgreSQL that answers (a slow query, a stalled
    loop) marks it down too, but the probe goes at once and finds it up."""
    engine = make_engine(
        infra.database_url, application_name="guard-slow", command_timeout_s=DEADLINE_S
    )
    guard = _guard(engine)
    try:
        async with engine.connect() as conn:
            with pytest.raises(TimeoutError):
                await conn.execute(text("SELECT pg_sleep(2)"))
        assert await _eventually_up(guard, within=1.0) < 1.0
        assert guard.probes == 1
        await _select_one(engine)
    finally:
        await engine.dispose()


async def test_other_errors_do_not_mark_it_down(infra: Infra) -> None:
    from sqlalchemy.exc import ProgrammingError

    engine = make_engine(infra.database_url, application_name="guard-other")
    guard = _guard(engine)
    try:
        async with engine.connect() as conn:
            with pytest.raises(ProgrammingError):
                await conn.execute(text("SELECT * FROM no_such_table"))
        with pytest.raises(TimeoutError):  # not the database's deadline
            async with engine.connect() as conn, asyncio.timeout(0.05):
                await conn.execute(text("SELECT pg_sleep(1)"))
        assert guard.up and guard.probes == 0
        await _select_one(engine)
    finally:
        await engine.dispose()


async def test_disposing_the_engine_ends_the_probe(
    proxy: HangingProxy, guarded: AsyncEngine
) -> None:
    guard = _guard(guarded)
    proxy.hang()
    exc, _ = await _timed(_select_one(guarded))
    assert isinstance(exc, TimeoutError) and not guard.up
    probe = guard._probe
    assert probe is not None and not probe.done()
    await guarded.dispose()
    await asyncio.sleep(0)
    assert probe.cancelled() or probe.done()
    assert guard.up and _guard(guarded) is guard  # the new pool keeps the guard
