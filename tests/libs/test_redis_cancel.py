"""A task that sends Redis commands in a loop stops when it is cancelled.

redis-py sends under ``asyncio.wait_for``, which on Python 3.11 loses a cancellation that
arrives as the write completes: the task carried on. A worker's poll loop did exactly that
(one CI run hung on it); here about 4 in 10 cancellations of such a loop were lost. The
clients libs makes (``make_redis``, the worker's ``open_pool``) keep every cancellation.
"""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis

from libs.redis import make_redis
from libs.testing import Infra
from libs.worker import open_pool, worker_redis_settings

ROUNDS = 60


async def lost_cancellations(client: Redis) -> int:
    """Cancel a loop of commands ROUNDS times at random moments; how many it ignored."""
    lost = 0
    for _ in range(ROUNDS):

        async def poll() -> None:
            while True:
                await client.zrangebyscore("aistack:test:cancel", 0, 10)

        task = asyncio.create_task(poll())
        await asyncio.sleep(random.uniform(0.001, 0.01))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1)
        if not done:
            lost += 1
            while not task.done():  # it ran on; stop it for good before the next round
                task.cancel()
                await asyncio.wait({task}, timeout=0.2)
    return lost


async def test_a_loop_of_commands_stops_when_cancelled(infra: Infra) -> None:
    client = make_redis(infra.redis_url)
    try:
        assert await lost_cancellations(client) == 0
    finally:
        await client.aclose()


async def test_the_workers_poll_stops_when_cancelled(infra: Infra) -> None:
    pool = open_pool(worker_redis_settings(infra.redis_url))
    try:
        assert await lost_cancellations(pool) == 0
    finally:
        await pool.aclose(close_connection_pool=True)
