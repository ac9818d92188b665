"""Circuit breakers shared by llm processes through Redis: failures counted across processes,
what one process learns about a provider (down, up again) applied by every other, one trial
call for all of them, and none of it asked of Redis per call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from libs.embedded import free_port
from libs.testing import Infra
from services.llm.routing.breaker import (
    CLOSED_MARK,
    FAILURES_SUFFIX,
    KEY_PREFIX,
    CircuitBreaker,
    SharedBreakers,
    State,
)


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


async def eventually_async(
    read: Callable[[], Awaitable[object]], expected: object, within: float = 3.0
) -> None:
    deadline = time.monotonic() + within
    while (value := await read()) != expected:
        assert time.monotonic() < deadline, f"{value!r}, not {expected!r}"
        await asyncio.sleep(0.01)


def gauge(provider: str) -> float | None:
    return REGISTRY.get_sample_value("aistack_llm_breaker_state", {"provider": provider})


def name() -> str:
    return f"prov-{uuid.uuid4().hex[:8]}"


async def test_failures_of_all_processes_together_open_the_breaker(
    infra: Infra, redis: Redis
) -> None:
    provider = name()
    count = KEY_PREFIX + provider + FAILURES_SUFFIX
    async with (
        process(infra.redis_url, provider, failures=3) as a,
        process(infra.redis_url, provider, failures=3) as b,
    ):
        a.record_failure()
        b.record_failure()
        await eventually_async(lambda: redis.get(count), b"2")
        assert a.state is State.CLOSED and b.state is State.CLOSED
        # expires a while after the last failure (slack for a busy CI machine)
        assert 50_000 < await redis.pttl(count) <= 60_000

        # a third failure anywhere opens it everywhere: 3 calls in total, not 3 per process
        a.record_failure()
        await eventually(lambda: a.state is State.OPEN and b.state is State.OPEN)
        assert not a.allow() and not b.allow()
        assert gauge(provider) == State.OPEN
        assert 20_000 < await redis.pttl(KEY_PREFIX + provider) <= 30_000
        assert await redis.exists(count) == 0, "the next count starts at 0"


async def test_a_success_after_failures_starts_the_count_again(infra: Infra, redis: Redis) -> None:
    provider = name()
    count = KEY_PREFIX + provider + FAILURES_SUFFIX
    async with (
        process(infra.redis_url, provider, failures=3) as a,
        process(infra.redis_url, provider, failures=3) as b,
    ):
        a.record_failure()
        b.record_failure()
        await eventually_async(lambda: redis.get(count), b"2")
        b.record_success()  # the provider answers: not down
        await eventually_async(lambda: redis.exists(count), 0)
        # four failures, three of them in a row: the count is 2
        a.record_failure()
        b.record_failure()
        await eventually_async(lambda: redis.get(count), b"2")
        await asyncio.sleep(0.05)
        assert a.state is State.CLOSED and b.state is State.CLOSED


async def test_only_one_of_two_half_open_breakers_gets_the_trial(
    infra: Infra, redis: Redis
) -> None:
    provider = name()
    async with (
        process(infra.redis_url, provider, open_s=0.5) as a,
        process(infra.redis_url, provider, open_s=0.5) as b,
    ):
        a.record_failure()
        a.record_failure()
        await eventually(lambda: b.state is State.OPEN)
        # both hold calls back, so both want the trial when the cool-down ends
        assert not a.allow() and not b.allow()
        await eventually(lambda: State.HALF_OPEN in (a.state, b.state), within=2.0)
        winner, loser = (a, b) if a.state is State.HALF_OPEN else (b, a)
        assert loser.state is State.OPEN
        assert await redis.get(KEY_PREFIX + provider) is not None  # the claim
        assert winner.allow(), "the winner sends the trial"
        for _ in range(20):
            assert not loser.allow(), "the loser sends nothing while the trial is under way"
            assert not winner.allow(), "one trial at a time"
            await asyncio.sleep(0.01)

        # the trial fails: open again everywhere, a new cool-down, a new single trial
        winner.record_failure()
        await eventually(lambda: loser.state is State.OPEN and winner.state is State.OPEN)
        assert not a.allow() and not b.allow()
        await eventually(lambda: State.HALF_OPEN in (a.state, b.state), within=2.0)
        winner, loser = (a, b) if a.state is State.HALF_OPEN else (b, a)
        assert loser.state is State.OPEN
        assert winner.allow() and not loser.allow()

        # this one succeeds: closed everywhere
        winner.record_success()
        await eventually(lambda: loser.state is State.CLOSED)
        # no claim sent before hearing of the success can win now; a process starting now
        # starts closed
        assert await redis.get(KEY_PREFIX + provider) == CLOSED_MARK
        async with process(infra.redis_url, provider, open_s=0.5) as c:
            assert c.state is State.CLOSED
        assert a.allow() and a.allow() and b.allow() and b.allow()
        assert gauge(provider) == State.CLOSED


async def test_a_trial_claim_that_expires_lets_another_process_try(
    infra: Infra, redis: Redis
) -> None:
    provider = name()
    async with (
        process(infra.redis_url, provider, open_s=0.4) as a,
        process(infra.redis_url, provider, open_s=0.4) as b,
    ):
        a.record_failure()
        a.record_failure()
        await eventually(lambda: b.state is State.OPEN)
        assert not a.allow()  # only a wants the trial
        await eventually(lambda: a.state is State.HALF_OPEN, within=2.0)
        assert not b.allow()  # b asks now: a holds the claim
        await asyncio.sleep(0.1)
        assert b.state is State.OPEN and not b.allow()
        # a never reports (its process died mid-trial): once its claim expires, b tries
        await eventually(b.allow, within=2.0)
        assert b.state is State.HALF_OPEN
        b.record_success()
        await eventually(lambda: a.state is State.CLOSED)


async def test_a_starting_process_reads_open_breakers_until_they_expire(
    infra: Infra, redis: Redis
) -> None:
    provider = name()
    async with process(infra.redis_url, provider, open_s=0.6) as a:
        a.record_failure()
        a.record_failure()
        await eventually_async(lambda: redis.exists(KEY_PREFIX + provider), 1)
        async with process(infra.redis_url, provider, open_s=0.6) as c:
            # no announcement reached c: it read the key when it started
            assert c.state is State.OPEN
            assert not c.allow()  # c wants the trial
            # ... and its cool-down ends with the key's, not a whole open_s after its start
            await asyncio.sleep(0.6)
            await eventually(c.allow, within=1.0)
            assert c.state is State.HALF_OPEN
            # a process starting during c's trial waits for its outcome too
            async with process(infra.redis_url, provider, open_s=0.6) as d:
                assert d.state is State.OPEN and not d.allow()
                c.record_success()
                await eventually(lambda: d.state is State.CLOSED and a.state is State.CLOSED)
        async with process(infra.redis_url, provider, open_s=0.6) as e:
            assert e.state is State.CLOSED


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


async def test_a_breaker_alone_decides_in_memory() -> None:
    breaker = CircuitBreaker(name(), failures=2, open_s=0.1)
    breaker.record_failure()
    breaker.record_success()  # not in a row
    breaker.record_failure()
    assert breaker.allow() and breaker.state is State.CLOSED
    breaker.record_failure()
    assert breaker.state is State.OPEN and not breaker.allow()
    await asyncio.sleep(0.12)
    assert breaker.allow(), "the first call after the cool-down is the trial"
    assert breaker.state is State.HALF_OPEN and not breaker.allow()
    breaker.release()  # the trial said nothing about health: the next call is one
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is State.OPEN and not breaker.allow()
    await asyncio.sleep(0.12)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is State.CLOSED and breaker.allow() and breaker.allow()


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
