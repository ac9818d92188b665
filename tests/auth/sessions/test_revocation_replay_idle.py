"""The revocation replay is cheap while nothing is owed (it does not look at
auth.pending_revocations every second), yet a revocation Redis missed in this process goes
out within about a second of Redis answering, and one left by a process that died is found
at the next idle look."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.redis import make_redis
from services.auth.sessions.revocations import (
    SESSION_REVOKED_PREFIX,
    announce,
    record,
    replay_forever,
)
from tests.support.faults.redis import eventually
from tests.support.faults.redis_restart import own_redis, start, stop

TTL = 960


class Counted:
    """A session factory that counts the transactions the replay opens."""

    def __init__(self, factory: Callable[[], AsyncSession]) -> None:
        self.factory = factory
        self.opened = 0

    def __call__(self) -> AsyncSession:
        self.opened += 1
        return self.factory()


def savepoint_factory(db: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )


async def owe(factory: Callable[[], AsyncSession], sid: uuid.UUID) -> None:
    """What ending a session leaves behind when its announcement did not go out."""
    async with factory() as session:
        await record(session, [sid], datetime.now(UTC), TTL)
        await session.commit()


async def owed(db: AsyncConnection, sid: uuid.UUID) -> int:
    """Whether this session's revocation is still owed (other tests' are not counted)."""
    stmt = text("SELECT count(*) FROM auth.pending_revocations WHERE session_id = :s")
    return int(await db.scalar(stmt, {"s": sid}) or 0)


@contextlib.asynccontextmanager
async def replaying(factory: Counted, redis: Redis, idle_s: float) -> AsyncIterator[None]:
    task = asyncio.create_task(replay_forever(factory, redis, idle_s=idle_s))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_idle_replay_looks_every_idle_interval_not_every_second(
    db: AsyncConnection, redis: Redis
) -> None:
    factory = savepoint_factory(db)
    counted = Counted(factory)
    sid = uuid.uuid4()
    marker = f"{SESSION_REVOKED_PREFIX}{sid}"
    started = time.monotonic()
    async with replaying(counted, redis, idle_s=2.0):
        await asyncio.sleep(0.3)
        assert counted.opened == 1  # it looked once, at start
        # left by a process that died between its commit and its announcement
        await owe(factory, sid)
        await asyncio.sleep(1.3 - (time.monotonic() - started))
        # a once-a-second replay would have sent it by now
        assert not await redis.exists(marker)
        assert counted.opened == 1

        async def marked() -> bool:
            return bool(await redis.exists(marker))

        await eventually(marked, within=3)
        assert 1.9 < time.monotonic() - started < 3.0  # the idle look found it
        assert await owed(db, sid) == 0


async def test_a_failed_announcement_has_the_replay_look_every_second_until_redis_answers(
    db: AsyncConnection, tmp_path: Path
) -> None:
    factory = savepoint_factory(db)
    counted = Counted(factory)
    sid = uuid.uuid4()
    with own_redis(tmp_path / "redis") as server:
        client = make_redis(server.url)
        try:
            # idle: it would not look again for a minute on its own
            async with replaying(counted, client, idle_s=60):
                await asyncio.sleep(0.2)
                await stop(server)
                await owe(factory, sid)
                with pytest.raises(Exception):  # noqa: B017 - whichever Redis error it is
                    await announce(client, [(sid, TTL)])  # as the logout's after-commit hook
                await asyncio.sleep(1.5)
                looks_while_down = counted.opened
                assert looks_while_down >= 2  # at once, then every second

                await start(server)
                back = time.monotonic()
                check = Redis.from_url(server.url)
                try:

                    async def marked() -> bool:
                        return bool(await check.exists(f"{SESSION_REVOKED_PREFIX}{sid}"))

                    await eventually(marked, within=5)
                    assert time.monotonic() - back < 2.0
                finally:
                    await check.aclose()

                async def settled() -> bool:
                    # the row goes with the replay's commit, just after the announcement
                    return await owed(db, sid) == 0

                await eventually(settled, within=2)
                # nothing owed any more: back to idle looks
                opened = counted.opened
                await asyncio.sleep(1.5)
                assert counted.opened == opened
        finally:
            await client.aclose()
