"""Session-wide real infrastructure: PostgreSQL (pgvector) and Redis, migrations applied once.

Set TEST_DATABASE_URL / TEST_REDIS_URL to use existing servers; otherwise embedded servers
are started under .data/test and stopped at the end of the session.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs import migrations
from libs.db import make_engine
from libs.testing import Infra, start_infra
from tests.support import leaks

ROOT = Path(__file__).resolve().parent.parent
# no metrics listeners (each would take its default port, 9000 and up, shared by every test
# session on the machine): a test that wants one sets its port (tests/deploy/test_metrics.py)
os.environ.setdefault("METRICS_PORT", "0")
os.environ.setdefault("WORKER_METRICS_PORT", "0")


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    data = ROOT / ".data" / f"test-{os.getpid()}"
    shutil.rmtree(data, ignore_errors=True)
    infra = start_infra(data)
    os.environ["DATABASE_URL"] = infra.database_url
    os.environ["REDIS_URL"] = infra.redis_url
    os.environ.setdefault("ENVIRONMENT", "test")
    os.environ.setdefault("LOG_JSON", "true")
    migrations.upgrade_all(infra.database_url)
    yield infra
    infra.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
async def engine(infra: Infra) -> AsyncIterator[AsyncEngine]:
    # the platform's own engine settings (libs/db.py), JSONB decoding included; no guard, so
    # a test that breaks the database does not leave it marked down for the next one
    eng = make_engine(infra.database_url, pool_size=5, guard_retry_s=None)
    yield eng
    await eng.dispose()


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that is rolled back after the test."""
    async with engine.connect() as conn:
        trans = await conn.begin()
        yield conn
        if trans.is_active:
            await trans.rollback()


@pytest.fixture
async def redis(infra: Infra) -> AsyncIterator[Redis]:
    client = Redis.from_url(infra.redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if leaks.leaks_file() is not None:  # first: set up before, torn down after all others
        for item in items:
            item.fixturenames.insert(0, "_leaks")  # type: ignore[attr-defined]


@pytest.fixture
async def _leaks(
    request: pytest.FixtureRequest, engine: AsyncEngine, infra: Infra
) -> AsyncIterator[None]:
    """Opt-in (TEST_LEAKS=<file>): note what each test left behind (tests/support/leaks.py)."""
    where = leaks.leaks_file()
    assert where is not None
    before = await leaks.snapshot(engine, infra.redis_url)
    yield
    leaks.record(where, request.node.nodeid, before, await leaks.snapshot(engine, infra.redis_url))
