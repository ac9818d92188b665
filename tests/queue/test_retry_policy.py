"""Retry policies per job type: backoff with jitter, which errors retry, dead letters."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from libs.queue import JobContext, Permanent, RetryPolicy, enqueue_now, job
from libs.testing import Infra
from tests.support.workers import events_for, run_burst

SERVICE = "retrytest"
calls: list[tuple[str, int]] = []
FAST = RetryPolicy(max_tries=3, backoff_s=0.02, jitter=0.0)


@job(retry=FAST)
async def always_fails(ctx: JobContext, tag: str) -> None:
    calls.append((tag, ctx.attempt))
    raise ConnectionError(f"upstream down for {tag}")


@job(retry=FAST)
async def fails_once(ctx: JobContext) -> str:
    calls.append(("once", ctx.attempt))
    if ctx.attempt == 1:
        raise ConnectionError("blip")
    return "ok"


@job(retry=FAST)
async def bad_input(ctx: JobContext) -> None:
    calls.append(("bad", ctx.attempt))
    raise Permanent("the file is not JSON")


@job(retry=RetryPolicy(max_tries=3, backoff_s=0.02, jitter=0.0, retry_on=(ConnectionError,)))
async def only_connection_errors(ctx: JobContext) -> None:
    calls.append(("value", ctx.attempt))
    raise ValueError("no retry for this one")


@job(retry=FAST, timeout=0.05)
async def slow(ctx: JobContext) -> None:
    calls.append(("slow", ctx.attempt))
    await asyncio.sleep(5)


FUNCTIONS = [always_fails, fails_once, bad_input, only_connection_errors, slow]


def statuses(events: list[Any]) -> list[tuple[str, int]]:
    return [(e.status, e.attempt) for e in events]


async def test_a_job_out_of_tries_is_a_dead_letter_with_its_traceback(
    infra: Infra, redis: Redis
) -> None:
    calls.clear()
    jid = await enqueue_now(redis, service=SERVICE, function="always_fails", args=["a"])
    assert jid
    await run_burst(infra.redis_url, SERVICE, FUNCTIONS)
    assert calls == [("a", 1), ("a", 2), ("a", 3)]
    evs = await events_for(redis, jid)
    assert statuses(evs) == [
        ("queued", 1),
        ("running", 1),
        ("queued", 2),
        ("running", 2),
        ("queued", 3),
        ("running", 3),
        ("dead", 3),
    ]
    # a retry's queued event says why and when
    assert evs[2].error == "ConnectionError: upstream down for a" and evs[2].run_at is not None
    dead = evs[-1]
    assert dead.error == "ConnectionError: upstream down for a"
    assert dead.traceback and "always_fails" in dead.traceback
    assert "ConnectionError" in dead.traceback
    # a dead letter carries what it takes to run it again
    assert dead.args == ["a"] and dead.kwargs == {}


async def test_a_retried_failure_succeeds_on_its_next_try(infra: Infra, redis: Redis) -> None:
    calls.clear()
    jid = await enqueue_now(redis, service=SERVICE, function="fails_once")
    assert jid
    await run_burst(infra.redis_url, SERVICE, FUNCTIONS)
    assert calls == [("once", 1), ("once", 2)]
    assert statuses(await events_for(redis, jid))[-1] == ("succeeded", 2)


async def test_errors_the_policy_does_not_retry_fail_at_once(infra: Infra, redis: Redis) -> None:
    calls.clear()
    permanent = await enqueue_now(redis, service=SERVICE, function="bad_input")
    other = await enqueue_now(redis, service=SERVICE, function="only_connection_errors")
    assert permanent and other
    await run_burst(infra.redis_url, SERVICE, FUNCTIONS)
    assert sorted(calls) == [("bad", 1), ("value", 1)]
    for jid in (permanent, other):
        assert statuses(await events_for(redis, jid))[-1] == ("failed", 1)


async def test_a_timeout_is_a_failure_the_policy_retries(infra: Infra, redis: Redis) -> None:
    calls.clear()
    jid = await enqueue_now(redis, service=SERVICE, function="slow")
    assert jid
    await run_burst(infra.redis_url, SERVICE, FUNCTIONS)
    assert calls == [("slow", 1), ("slow", 2), ("slow", 3)]
    evs = await events_for(redis, jid)
    assert statuses(evs)[-1] == ("dead", 3) and (evs[-1].error or "").startswith("TimeoutError")


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(max_tries=10, backoff_s=1, multiplier=2, max_backoff_s=30, jitter=0.5)
    assert [policy.delay_s(a, rand=lambda: 0.0) for a in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    # the jitter draws each delay within its lower half
    assert policy.delay_s(3, rand=lambda: 1.0) == 2.0
    assert policy.retries(ConnectionError()) and not policy.retries(Permanent())
    assert not RetryPolicy(retry_on=(ConnectionError,)).retries(ValueError())
    assert not RetryPolicy(give_up_on=(KeyError,)).retries(KeyError())
