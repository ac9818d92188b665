"""The Redis guard against a real Redis that hangs (SIGSTOP) or dies: one short deadline, then
no waiting at all until a background probe hears from Redis again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ResponseError

from libs.redis import RedisGuard, RedisUnavailable, guard_for, make_redis
from tests.support.faults.redis import FaultyRedis, eventually, faulty_redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FaultyRedis]:
    with faulty_redis(tmp_path / "redis") as redis:
        yield redis


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


@pytest.fixture
def logged() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("aistack.redis")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_hung_redis_costs_one_deadline_then_nothing_until_it_answers(
    server: FaultyRedis, logged: Records
) -> None:
    redis = make_redis(server.url)
    guard = guard_for(redis).configure(name="guard-hung", timeout_s=0.2, retry_s=0.3)
    # counters only grow in the process: what this test adds (it may run twice in a session)
    fallbacks = _sample("aistack_redis_fallbacks_total", client="guard-hung", site="site")
    outages = _sample("aistack_redis_outages_total", client="guard-hung")
    try:
        await guard.run("site", redis.set("k", b"v"))
        server.hang()

        started = time.monotonic()
        with pytest.raises(RedisUnavailable):
            await guard.run("site", redis.get("k"))
        took = time.monotonic() - started
        assert 0.15 <= took < 1.0, took  # the deadline, not the 5 s socket timeout
        assert guard.up is False
        assert _sample("aistack_redis_available", client="guard-hung") == 0

        # everyone else skips it at once, without touching the network
        started = time.monotonic()
        for _ in range(100):
            with pytest.raises(RedisUnavailable):
                await guard.run("site", redis.get("k"))
        assert time.monotonic() - started < 0.1
        fell_back = _sample("aistack_redis_fallbacks_total", client="guard-hung", site="site")
        assert fell_back - fallbacks == 101

        # still hung: the probes (every 0.3 s, each waiting 1 s) keep the window open
        await asyncio.sleep(1.5)
        assert guard.up is False

        server.resume()
        await eventually(_up(guard), within=3.0)
        assert await guard.run("site", redis.get("k")) == b"v"
        assert _sample("aistack_redis_available", client="guard-hung") == 1
        assert _sample("aistack_redis_outages_total", client="guard-hung") - outages == 1
    finally:
        server.resume()
        await redis.aclose()
    levels = [level for level, text in logged.lines if "Redis" in text]
    # one line when it went away, one when it came back (not one per call)
    assert levels == ["ERROR", "WARNING"], logged.lines


async def test_a_dead_redis_fails_fast_and_is_used_again_once_back(server: FaultyRedis) -> None:
    redis = make_redis(server.url)
    guard = guard_for(redis).configure(name="guard-dead", timeout_s=0.2, retry_s=0.2)
    try:
        server.kill()
        started = time.monotonic()
        with pytest.raises(RedisUnavailable):
            await guard.run("site", redis.ping())
        assert time.monotonic() - started < 0.2  # refused at once
        assert guard.up is False

        server.start()
        await eventually(_up(guard), within=3.0)
        assert await guard.run("site", redis.ping())
    finally:
        await redis.aclose()


async def test_an_error_from_a_live_redis_does_not_mark_it_down(server: FaultyRedis) -> None:
    redis = make_redis(server.url)
    guard = guard_for(redis).configure(name="guard-live")
    try:
        await redis.set("text", b"x")
        with pytest.raises(ResponseError):
            await guard.run("site", redis.incr("text"))
        assert guard.up is True
    finally:
        await redis.aclose()


async def test_closing_the_client_ends_the_probe(server: FaultyRedis) -> None:
    redis = make_redis(server.url)
    guard = guard_for(redis).configure(name="guard-closed", timeout_s=0.2, retry_s=0.1)
    server.kill()
    with pytest.raises(RedisUnavailable):
        await guard.run("site", redis.ping())
    probe = guard._probe
    assert probe is not None and not probe.done()
    await redis.aclose()
    await eventually(_done(probe), within=1.0)


def _up(guard: RedisGuard) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return guard.up

    return check


def _done(task: asyncio.Task[None]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return task.done()

    return check
