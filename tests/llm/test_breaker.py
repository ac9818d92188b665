"""Circuit breakers shared by llm processes through Redis: what one process learns about a
provider (down, up again) every other process applies, without asking Redis per call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from libs.embedded import free_port
from libs.testing import Infra
from services.llm.breaker import KEY_PREFIX, CircuitBreaker, SharedBreakers, State


@asynccontextmanager
async def process(
    url: str, provider: str, *, failures: int = 2, open_s: float = 30.0
) -> AsyncIterator[CircuitBreaker]:
    """The breakers of one llm process (its own Redis connections), following the others."""
    client = Redis.from_url(url, socket_connect_timeout=0.5)
    breaker = CircuitBreaker(provider, failures=failures, open_s=open_s)
    shared = SharedBreakers({provider: breaker}, client)
    await shared.start()
    try:
        yield breaker
    finally:
        await shared.stop()
        await client.aclose()


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def gauge(provider: str) -> float | None:
    return REGISTRY.get_sample_value("aistack_llm_breaker_state", {"provider": provider})


def name() -> str:
    return f"prov-{uuid.uuid4().hex[:8]}"


async def test_failures_in_one_process_open_the_breaker_in_the_others(
    infra: Infra, redis: Redis
) -> None:
    provider = name()
    async with (
        process(infra.redis_url, provider) as a,
        process(infra.redis_url, provider) as b,
    ):
        # failures are counted per process: one each opens nothing
        a.record_failure()
        b.record_failure()
        await asyncio.sleep(0.1)
        assert a.state is State.CLOSED and b.state is State.CLOSED
        assert await redis.exists(KEY_PREFIX + provider) == 0

        a.record_failure()
        assert a.state is State.OPEN
        await eventually(lambda: b.state is State.OPEN)
        assert not b.allow(), "b sends nothing to the provider a found down"
        assert gauge(provider) == State.OPEN
        assert 29_000 < await redis.pttl(KEY_PREFIX + provider) <= 30_000


async def test_a_successful_trial_closes_the_breaker_everywhere(infra: Infra, redis: Redis) -> None:
    provider = name()
    async with (
        process(infra.redis_url, provider, open_s=0.3) as a,
        process(infra.redis_url, provider, open_s=0.3) as b,
    ):
        a.record_failure()
        a.record_failure()
        await eventually(lambda: b.state is State.OPEN)
        await asyncio.sleep(0.35)
        assert a.state is State.HALF_OPEN and b.state is State.HALF_OPEN
        assert a.allow()  # a's trial call
        a.record_success()
        assert a.state is State.CLOSED
        await eventually(lambda: b.state is State.CLOSED)
        assert gauge(provider) == State.CLOSED
        assert await redis.exists(KEY_PREFIX + provider) == 0
        # closed in b too: its calls pass again, not just one trial
        assert b.allow() and b.allow()


async def test_a_failed_trial_opens_the_breaker_again_everywhere(infra: Infra) -> None:
    provider = name()
    async with (
        process(infra.redis_url, provider, open_s=0.3) as a,
        process(infra.redis_url, provider, open_s=0.3) as b,
    ):
        a.record_failure()
        a.record_failure()
        await eventually(lambda: b.state is State.OPEN)
        await asyncio.sleep(0.35)
        assert b.state is State.HALF_OPEN
        assert a.allow()
        a.record_failure()
        await eventually(lambda: b.state is State.OPEN)
        assert not b.allow()


async def test_a_starting_process_reads_open_breakers_until_they_expire(
    infra: Infra, redis: Redis
) -> None:
    provider = name()
    async with process(infra.redis_url, provider, open_s=0.6) as a:
        a.record_failure()
        a.record_failure()
        for _ in range(100):  # a's announcement is written in the background
            if await redis.exists(KEY_PREFIX + provider):
                break
            await asyncio.sleep(0.01)
        async with process(infra.redis_url, provider, open_s=0.6) as c:
            # no announcement reached c: it read the key when it started
            assert c.state is State.OPEN
            assert not c.allow()
            # ... and its cool-down ends with the key's, not a whole open_s after its start
            await asyncio.sleep(0.6)
            assert await redis.exists(KEY_PREFIX + provider) == 0
            assert c.state is State.HALF_OPEN
        async with process(infra.redis_url, provider, open_s=0.6) as d:
            assert d.state is State.CLOSED


async def test_the_listener_reconnects_after_losing_redis(infra: Infra, redis: Redis) -> None:
    provider = name()
    async with (
        process(infra.redis_url, provider) as a,
        process(infra.redis_url, provider) as b,
    ):
        # drop every subscriber's connection (a failover, a restarted Redis...)
        assert await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 2
        await asyncio.sleep(0.5)  # resubscribed by now
        a.record_failure()
        a.record_failure()
        await eventually(lambda: b.state is State.OPEN)


async def test_without_redis_each_process_keeps_its_own_breaker() -> None:
    provider = name()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    async with process(dead, provider, open_s=0.2) as a:
        assert time.monotonic() - started < 1.5, "a missing Redis must not hold up the start"
        assert a.allow()
        a.record_failure()
        a.record_failure()
        assert a.state is State.OPEN and not a.allow()
        assert gauge(provider) == State.OPEN
        await asyncio.sleep(0.25)
        assert a.allow()  # half-open trial
        a.record_success()
        assert a.state is State.CLOSED and a.allow()
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 3


async def test_announcements_of_other_providers_and_garbage_are_ignored(
    infra: Infra, redis: Redis
) -> None:
    provider = name()
    async with process(infra.redis_url, provider) as a:
        await redis.publish("llm:breaker", b"not json")
        await redis.publish("llm:breaker", b'{"provider": "other", "state": "open"}')
        await redis.publish(
            "llm:breaker",
            b'{"provider": "other", "state": "open", "open_ms": 1000, "origin": "x"}',
        )
        await asyncio.sleep(0.3)
        assert a.state is State.CLOSED
        # the listener survived: a real announcement still gets through
        await redis.publish(
            "llm:breaker",
            f'{{"provider": "{provider}", "state": "open", "open_ms": 5000, "origin": "x"}}',
        )
        await eventually(lambda: a.state is State.OPEN)
