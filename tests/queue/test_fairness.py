"""Fair queues: one organization's flood does not starve another's job; per-organization
concurrency limits per job type; priorities; a wake-up starts new work without a poll."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis

from libs.queue import JobContext, enqueue_now, enqueue_prepared, fair, job, prepare_job
from libs.queue.names import queue_name
from libs.testing import Infra
from tests.support.workers import make_worker, run_burst

SERVICE = "fairtest"
started: list[tuple[str, str]] = []
running: dict[str, int] = {}
peak: dict[str, int] = {}


@job
async def work(ctx: JobContext, tag: str) -> None:
    started.append((ctx.org_id or "", tag))
    await asyncio.sleep(0.002)


@job(concurrency=2)
async def limited(ctx: JobContext, tag: str) -> None:
    org = ctx.org_id or ""
    started.append((org, tag))
    running[org] = running.get(org, 0) + 1
    peak[org] = max(peak.get(org, 0), running[org])
    await asyncio.sleep(0.02)
    running[org] -= 1


hold = asyncio.Event()


@job
async def long(ctx: JobContext, tag: str) -> None:
    started.append((ctx.org_id or "", tag))
    await hold.wait()


def reset() -> None:
    started.clear()
    running.clear()
    peak.clear()


async def test_one_tenants_flood_does_not_delay_anothers_job_beyond_its_fair_share(
    infra: Infra, redis: Redis
) -> None:
    reset()
    flooder, other = str(uuid.uuid4()), str(uuid.uuid4())
    flood = [
        prepare_job(service=SERVICE, function="work", args=[f"f{i}"], org_id=flooder)
        for i in range(2000)
    ]
    await enqueue_prepared(redis, flood)
    mine = await enqueue_now(redis, service=SERVICE, function="work", args=["mine"], org_id=other)
    assert mine
    depth = await fair.depth(redis, queue_name(SERVICE))
    assert depth.fair == 2001 and depth.ready == 0
    await run_burst(infra.redis_url, SERVICE, [work], max_jobs=4)
    assert len(started) == 2001
    # the two organizations take turns: the single job goes within the first round
    position = started.index((other, "mine"))
    assert position < 2 * 4, position
    # and the flood keeps its own order (give or take the jobs started together)
    flood_order = [int(tag[1:]) for org, tag in started if org == flooder]
    assert sorted(flood_order) == list(range(2000))
    assert all(abs(i - n) < 4 for i, n in enumerate(flood_order))


async def test_a_concurrency_limit_holds_per_organization(infra: Infra, redis: Redis) -> None:
    reset()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    jobs = [
        prepare_job(service=SERVICE, function="limited", args=[f"{org[:4]}{i}"], org_id=org)
        for i in range(8)
        for org in (a, b)
    ]
    await enqueue_prepared(redis, jobs)
    await run_burst(infra.redis_url, SERVICE, [limited], max_jobs=10)
    assert len(started) == 16
    # at most two at once per organization, though the worker had room for ten
    assert peak == {a: 2, b: 2}
    # slots are given back as jobs end
    for org in (a, b):
        assert await redis.zcard(fair.slot_key(queue_name(SERVICE), org, "limited")) == 0


async def test_a_slot_freed_is_filled_while_other_jobs_run(infra: Infra, redis: Redis) -> None:
    # arq keeps a running job in its queue until the job's end is written: the poll once took
    # those for jobs waiting to start, and a worker with a long job running took no more work
    # until it ended (ingestion ran in waves)
    reset()
    hold.clear()
    org = str(uuid.uuid4())
    await enqueue_now(redis, service=SERVICE, function="long", args=["long"], org_id=org)
    worker = make_worker(infra.redis_url, SERVICE, [long, work], burst=False, max_jobs=2)
    task = asyncio.create_task(worker.async_run())
    try:
        t0 = time.monotonic()
        while not started:
            assert time.monotonic() - t0 < 10, "the long job never started"
            await asyncio.sleep(0.01)
        shorts = [
            prepare_job(service=SERVICE, function="work", args=[f"s{i}"], org_id=org)
            for i in range(6)
        ]
        await enqueue_prepared(redis, shorts)
        t0 = time.monotonic()
        while len(started) < 7:
            assert time.monotonic() - t0 < 10, f"short jobs stalled behind the long one: {started}"
            await asyncio.sleep(0.01)
        # all six ran through the one free slot, the long job still running
        assert not hold.is_set() and len(worker.tasks) >= 1
        # and a running job is not counted as waiting (nor its age as the oldest wait)
        while len(worker.tasks) > 1:
            assert time.monotonic() - t0 < 10, "the short jobs' tasks did not end"
            await asyncio.sleep(0.01)
        depth = await fair.depth(redis, queue_name(SERVICE))
        assert (depth.ready, depth.fair, depth.oldest_ms) == (0, 0, None), depth
    finally:
        hold.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


async def test_higher_priority_goes_first(infra: Infra, redis: Redis) -> None:
    reset()
    org = str(uuid.uuid4())
    low = [
        prepare_job(service=SERVICE, function="work", args=[f"low{i}"], org_id=org, priority="low")
        for i in range(5)
    ]
    await enqueue_prepared(redis, low)
    await enqueue_now(
        redis, service=SERVICE, function="work", args=["urgent"], org_id=org, priority="high"
    )
    await run_burst(infra.redis_url, SERVICE, [work], max_jobs=1)
    assert started[0][1] == "urgent"


async def test_a_waiting_job_cancelled_never_runs(infra: Infra, redis: Redis) -> None:
    from libs.queue import cancel_job

    reset()
    org = str(uuid.uuid4())
    jid = await enqueue_now(redis, service=SERVICE, function="work", args=["x"], org_id=org)
    assert jid
    assert await cancel_job(redis, job_id=jid, service=SERVICE) == "dequeued"
    await run_burst(infra.redis_url, SERVICE, [work])
    assert started == []
    assert (await fair.depth(redis, queue_name(SERVICE))).fair == 0


async def test_a_new_job_starts_without_waiting_for_the_next_poll(
    infra: Infra, redis: Redis
) -> None:
    reset()
    # polls every 30 s: only the wake-up can start the job in time
    worker = make_worker(infra.redis_url, SERVICE, [work], burst=False, poll_delay=30)
    task = asyncio.create_task(worker.async_run())
    try:
        await asyncio.sleep(0.5)  # its first poll found nothing; it listens
        for i, org in enumerate((str(uuid.uuid4()), None)):
            before = len(started)
            t0 = time.monotonic()
            await enqueue_now(redis, service=SERVICE, function="work", args=[f"w{i}"], org_id=org)
            while len(started) == before:
                assert time.monotonic() - t0 < 5, "the job waited for a poll"
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()
