"""The jobs service applies job events a read batch at a time (one transaction, one XACK):
the rows are those of one event per transaction, a poison event is set aside without
blocking the stream, and nothing is acknowledged while PostgreSQL is down."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from libs.db import session_scope
from libs.embedded import free_port
from libs.queue import EVENTS_STREAM, JobEvent, emit_event
from services.jobs.jobs.recorder import CONSUMER_GROUP, EventConsumer
from services.jobs.jobs.repository import JobRepository, plan_upserts, status_rank
from services.jobs.models import Job
from tests.support.job_events import at, usage_job

SVC = "batchtest"
COLUMNS = [
    c.key for c in Job.__table__.columns if c.key not in ("id", "updated_at", "cancel_requested_at")
]


class CountingSession(Session):
    """Sessions whose commits the tests count."""


@pytest.fixture
def factory(db: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(
        bind=db,
        expire_on_commit=False,
        join_transaction_mode="create_savepoint",
        sync_session_class=CountingSession,
    )


@pytest.fixture
def commits() -> Iterator[list[int]]:
    """How many transactions the sessions committed."""
    count = [0]

    def on_commit(session: Session) -> None:
        count[0] += 1

    event.listen(CountingSession, "after_commit", on_commit)
    yield count
    event.remove(CountingSession, "after_commit", on_commit)


@pytest.fixture
def upserts(db: AsyncConnection) -> Iterator[list[int]]:
    """Rows of each upsert round trip to PostgreSQL (an executemany counts once)."""
    calls: list[int] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO jobs.jobs"):
            calls.append(len(params) if many else 1)

    event.listen(db.sync_connection, "before_cursor_execute", before)
    yield calls
    event.remove(db.sync_connection, "before_cursor_execute", before)


KINDS = ["usage", "steps", "retried", "cancelled", "near", "chaos"]


def scenario(rng: random.Random, job_id: str, kinds: list[str]) -> list[JobEvent]:
    """One job's events as workers emit them, or as a network and a crash can mangle them."""
    start = rng.uniform(0, 1000)
    kind = rng.choice(kinds)
    if kind == "usage":
        return usage_job(job_id, start)
    base: dict[str, Any] = {"job_id": job_id, "service": SVC, "function": "f"}
    if kind == "steps":
        evs = [JobEvent(**base, status="queued", progress=0, args=[3], ts=at(start))]
        evs.append(JobEvent(**base, status="running", progress=0, ts=at(start + 1)))
        for i in range(rng.randint(1, 3)):
            evs.append(
                JobEvent(
                    **base,
                    status="progress",
                    progress=30 * (i + 1),
                    message=f"step {i + 1}",
                    ts=at(start + 2 + i),
                )
            )
        evs.append(JobEvent(**base, status="succeeded", progress=100, ts=at(start + 9)))
        return evs
    if kind == "retried":
        return [
            JobEvent(**base, status="queued", progress=0, kwargs={"a": 1}, ts=at(start)),
            JobEvent(**base, status="running", progress=0, ts=at(start + 1)),
            JobEvent(**base, status="queued", attempt=2, ts=at(start + 2)),
            JobEvent(**base, status="running", attempt=2, progress=0, ts=at(start + 3)),
            JobEvent(**base, status="failed", attempt=2, error="boom", ts=at(start + 4)),
        ]
    if kind == "cancelled":
        return [
            JobEvent(**base, status="queued", progress=0, ts=at(start)),
            JobEvent(**base, status="running", progress=0, ts=at(start + 1)),
            JobEvent(**base, status="progress", progress=10, ts=at(start + 2)),
            JobEvent(**base, status="cancelled", message="cancelled", ts=at(start + 3)),
        ]
    statuses = ["queued", "running", "progress", "succeeded", "failed", "cancelled"]
    if kind == "near":
        # in status order within one attempt (what a merge needs), but anything else goes:
        # progress and messages on any event, equal and disagreeing clocks
        picked = sorted(
            (rng.choice(statuses) for _ in range(rng.randint(2, 5))),
            key=lambda st: min(statuses.index(st), 3),
        )
        return [
            JobEvent(
                **base,
                status=st,
                attempt=rng.choice([1, 1, 1, 2]),
                progress=rng.choice([None, 0, 40, 70]),
                message=rng.choice([None, "a", "b"]),
                ts=at(start + rng.choice([0, 1, 2, -1])),
            )
            for st in picked
        ]
    # chaos: any status, attempt, progress and message, clocks that disagree, equal times
    return [
        JobEvent(
            **base,
            status=rng.choice(statuses),
            attempt=rng.randint(1, 3),
            progress=rng.choice([None, 0, 40, 70]),
            message=rng.choice([None, "", "a", "b"]),
            error=rng.choice([None, "e1", "e2"]),
            args=rng.choice([None, [1], [2]]),
            user_id=rng.choice([None, str(uuid.uuid4())]),
            internal=rng.random() < 0.2,
            ts=at(start + rng.choice([0, 1, 2, 3, -5])),
        )
        for _ in range(rng.randint(1, 6))
    ]


def stream(seed: int, jobs: int, kinds: list[str] = KINDS) -> list[JobEvent]:
    """Many jobs' events interleaved as they land on the stream, some out of order
    (adjacent swaps) and some delivered twice."""
    rng = random.Random(seed)
    per_job = []
    for n in range(jobs):
        evs = scenario(rng, f"J{n}", kinds)
        for _ in range(rng.randint(0, 2)):
            i = rng.randrange(len(evs))
            if rng.random() < 0.5:
                evs.insert(i, evs[i])  # a duplicate delivery
            elif i + 1 < len(evs):
                evs[i], evs[i + 1] = evs[i + 1], evs[i]  # out of order
        per_job.append(evs)
    out: list[JobEvent] = []
    while any(per_job):
        evs = rng.choice([e for e in per_job if e])
        out.append(evs.pop(0))
    return out


def renamed(ev: JobEvent, prefix: str) -> JobEvent:
    return dataclasses.replace(ev, job_id=prefix + ev.job_id)


async def rows(
    factory: async_sessionmaker[AsyncSession], prefix: str
) -> dict[str, tuple[Any, ...]]:
    async with factory() as s:
        jobs = (await s.scalars(select(Job).where(Job.id.startswith(prefix)))).all()
    return {j.id.removeprefix(prefix): tuple(getattr(j, c) for c in COLUMNS) for j in jobs}


async def pending_ids(redis: Redis) -> list[bytes]:
    entries = await redis.xpending_range(EVENTS_STREAM, CONSUMER_GROUP, min="-", max="+", count=100)
    return [e["message_id"] for e in entries]


@pytest.mark.parametrize(
    ("seed", "kinds"), [(1, KINDS), (2, KINDS), (3, ["near"]), (4, ["near", "chaos"])]
)
async def test_batches_end_in_the_rows_of_one_event_per_transaction(
    redis: Redis, factory: async_sessionmaker[AsyncSession], seed: int, kinds: list[str]
) -> None:
    events = stream(seed, jobs=50, kinds=kinds)
    for ev in events:
        async with session_scope(factory) as s:
            await JobRepository(s).apply_event(renamed(ev, "one-"))
    for ev in events:
        await emit_event(redis, renamed(ev, "bat-"))
    # 37 a batch: a job's events often straddle two batches
    consumer = EventConsumer(redis, factory, consumer="t", batch=37)
    assert await consumer.drain() == len(events)

    expected = await rows(factory, "one-")
    assert len(expected) == 50
    got = await rows(factory, "bat-")
    assert got == expected
    assert await pending_ids(redis) == []


def arbitrary(rng: random.Random, job_id: str, attempt: int | None = None) -> JobEvent:
    statuses = ["queued", "running", "progress", "succeeded", "failed", "cancelled"]
    return JobEvent(
        job_id=job_id,
        service=SVC,
        function="f",
        status=rng.choice(statuses),
        attempt=attempt or rng.choice([1, 1, 2]),
        progress=rng.choice([None, 0, 40, 70]),
        message=rng.choice([None, "a", "b"]),
        error=rng.choice([None, "e1", "e2"]),
        args=rng.choice([None, [1], [2]]),
        ts=at(rng.choice([0, 1, 2, 3]) * 1000),
    )


async def test_a_merged_run_matches_one_by_one_whatever_the_row_held(
    factory: async_sessionmaker[AsyncSession],
) -> None:
    """Where a job's events merge into one upsert row, the result is the one-by-one result for
    any row they land on (none, behind, ahead, a later attempt, newer clocks)."""
    rng = random.Random(11)
    merged = 0
    async with session_scope(factory) as s:
        repo = JobRepository(s)
        for i in range(3000):
            if merged == 250:
                break
            attempt = rng.choice([1, 2, None])  # None: any attempt per event
            run = [arbitrary(rng, "", attempt) for _ in range(rng.randint(2, 4))]
            if rng.random() < 0.6:  # mostly in status order, as workers send them
                run.sort(
                    key=lambda e: status_rank("running" if e.status == "progress" else e.status)
                )
            if len(plan_upserts(run)) != 1:
                continue  # not mergeable exactly: applied event by event, nothing to compare
            merged += 1
            before = [arbitrary(rng, "") for _ in range(rng.randint(0, 3))]
            for prefix in ("one-", "bat-"):
                for ev in before:
                    await repo.apply_event(renamed(ev, f"{prefix}{i}"))
            for ev in run:
                await repo.apply_event(renamed(ev, f"one-{i}"))
            assert await repo.apply_events([renamed(ev, f"bat-{i}") for ev in run]) == 1
    assert merged == 250
    expected = await rows(factory, "one-")
    assert len(expected) == 250
    assert await rows(factory, "bat-") == expected


async def test_a_batch_of_usage_records_is_one_transaction_and_one_upsert_round_trip(
    redis: Redis,
    factory: async_sessionmaker[AsyncSession],
    commits: list[int],
    upserts: list[int],
) -> None:
    ids = [f"use-{n}" for n in range(30)]
    for n, jid in enumerate(ids):
        for ev in usage_job(jid, n):
            await emit_event(redis, ev)
    consumer = EventConsumer(redis, factory, consumer="t", batch=100)
    assert await consumer.run_once() == 90

    assert commits[0] == 1
    # queued + running + succeeded of a job fold into one row: 30 rows in one round trip
    assert upserts == [30]
    got = await rows(factory, "use-")
    assert len(got) == 30
    for jid in ids:
        row = dict(zip(COLUMNS, got[jid.removeprefix("use-")], strict=True))
        assert row["status"] == "succeeded" and row["progress"] == 100 and row["internal"]
        assert row["args"] == [{"tokens": 15}] and row["started_at"] and row["finished_at"]
    assert await pending_ids(redis) == []


async def test_a_poison_event_is_set_aside_and_the_stream_moves_on(
    redis: Redis,
    factory: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aistack.jobs")
    for n in range(5):
        for ev in usage_job(f"good-{n}", n):
            await emit_event(redis, ev)
    base: dict[str, Any] = {"job_id": "bad-1", "service": SVC, "function": "f"}
    await emit_event(redis, JobEvent(**base, status="queued", ts=at(0)))
    await emit_event(redis, JobEvent(**base, status="running", ts=at(1)))
    # PostgreSQL refuses a NUL character in text: this event fails however often it is tried
    await emit_event(redis, JobEvent(**base, status="failed", error="boom\x00", ts=at(2)))
    await redis.xadd(EVENTS_STREAM, {"not": "an event"})
    poison = (await redis.xrange(EVENTS_STREAM))[-2][0]

    consumer = EventConsumer(redis, factory, consumer="t", poison_retry_ms=300)
    assert await consumer.drain() == 17  # 5 usage jobs + the bad job's queued and running

    good = await rows(factory, "good-")
    assert len(good) == 5 and all(r[COLUMNS.index("status")] == "succeeded" for r in good.values())
    bad = await rows(factory, "bad-")
    assert bad["1"][COLUMNS.index("status")] == "running"
    # only the poison event is left pending (the malformed one was dropped and acknowledged)
    assert await pending_ids(redis) == [poison]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "bad-1" in errors[0].getMessage()
    assert "failed" in errors[0].getMessage()
    assert any("malformed" in r.getMessage() for r in caplog.records)

    # the stream is not blocked behind it
    for ev in usage_job("later-1", 0):
        await emit_event(redis, ev)
    assert await consumer.drain() == 3
    assert len(await rows(factory, "later-")) == 1
    assert await pending_ids(redis) == [poison]
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # not retried yet

    # tried again once due, alongside new work; still refused, still pending
    await _sleep(0.35)
    for ev in usage_job("later-2", 0):
        await emit_event(redis, ev)
    assert await consumer.drain() == 3
    assert await pending_ids(redis) == [poison]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "failure 2" in errors[1].getMessage()

    # trimmed from the stream (MAXLEN): nothing is left to apply, it is acknowledged
    await redis.xdel(EVENTS_STREAM, poison)
    await consumer.drain()
    assert await pending_ids(redis) == []
    assert any("trimmed" in r.getMessage() for r in caplog.records)


async def test_nothing_is_acknowledged_or_set_aside_while_postgres_is_down(
    redis: Redis, factory: async_sessionmaker[AsyncSession]
) -> None:
    from libs.db import make_engine, make_session_factory

    for n in range(3):
        for ev in usage_job(f"down-{n}", n):
            await emit_event(redis, ev)
    dead = make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing")
    consumer = EventConsumer(redis, make_session_factory(dead), consumer="t")
    try:
        for _ in range(2):  # read new, then own pending on the retry
            with pytest.raises(OSError):
                await consumer.run_once()
            assert len(await pending_ids(redis)) == 9
    finally:
        await dead.dispose()
    # PostgreSQL is back: the same consumer applies its pending events
    consumer.session_factory = factory
    assert await consumer.drain() == 9
    assert len(await rows(factory, "down-")) == 3
    assert await pending_ids(redis) == []


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def test_a_redis_outage_is_one_line_per_try_not_a_traceback(
    factory: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    down = Redis(port=free_port(), socket_connect_timeout=0.5)
    consumer = EventConsumer(down, factory, block_ms=100)
    task = asyncio.create_task(consumer.run_forever())
    try:
        with caplog.at_level(logging.WARNING, logger="aistack.jobs"):
            await asyncio.sleep(1.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await down.aclose()
    tries = [r for r in caplog.records if "consumer" in r.getMessage()]
    assert tries, caplog.text
    assert all("Redis unreachable" in r.getMessage() and not r.exc_info for r in tries)
