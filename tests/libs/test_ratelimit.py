"""GCRA limits in Redis: exact bursts, atomic multi-limit checks, refill, shared across clients."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from libs.ratelimit import LocalLimiter, RateDecision, hit, hit_many, refund_many
from libs.testing import Infra


@pytest.mark.parametrize("limit", [1, 7, 10, 60, 1000])
async def test_a_burst_passes_exactly_the_limit(redis: Redis, limit: int) -> None:
    # a long window, so nothing refills while the burst runs
    results = [await hit(redis, "rl:burst", limit, 3600) for _ in range(limit + 3)]
    passed = [r for r in results if r.allowed]
    assert len(passed) == limit
    # remaining counts down to zero, then refusals say how long to wait
    assert [r.remaining for r in passed] == list(range(limit - 1, -1, -1))
    refused = results[limit]
    assert refused.remaining == 0
    assert 0 < refused.retry_after <= 3600 / limit
    assert refused.retry_after == pytest.approx(3600 / limit, abs=1)
    assert refused.reset_seconds == pytest.approx(3600, abs=2)
    assert passed[0].retry_after == 0
    assert refused.limit == limit


async def test_headers_of_a_decision() -> None:
    ok = RateDecision(True, 10, 9, 6.0, 0)
    assert ok.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "9",
        "RateLimit-Reset": "6",
    }
    refused = RateDecision(False, 10, 0, 59.2, 0.2)
    assert refused.headers()["Retry-After"] == "1"
    assert refused.headers()["RateLimit-Reset"] == "60"


async def test_the_bucket_refills_over_time(redis: Redis) -> None:
    # 5 per 0.5 s: one unit comes back every 100 ms
    for _ in range(5):
        assert (await hit(redis, "rl:refill", 5, 0.5)).allowed
    refused = await hit(redis, "rl:refill", 5, 0.5)
    assert not refused.allowed
    await asyncio.sleep(refused.retry_after + 0.01)
    assert (await hit(redis, "rl:refill", 5, 0.5)).allowed
    assert not (await hit(redis, "rl:refill", 5, 0.5)).allowed
    await asyncio.sleep(0.55)
    full = await hit(redis, "rl:refill", 5, 0.5, cost=0)
    assert full.remaining == 5


async def test_cost_counts_units_and_a_refusal_consumes_nothing(redis: Redis) -> None:
    # tokens per minute: 1000
    first = await hit(redis, "rl:tpm", 1000, 60, cost=700)
    assert first.allowed and first.remaining == 300
    too_much = await hit(redis, "rl:tpm", 1000, 60, cost=400)
    assert not too_much.allowed
    assert too_much.remaining == 300
    assert too_much.retry_after == pytest.approx(100 * 0.06, abs=0.2)
    assert (await hit(redis, "rl:tpm", 1000, 60, cost=300)).allowed
    assert not (await hit(redis, "rl:tpm", 1000, 60, cost=1)).allowed


async def test_forced_usage_is_recorded_even_over_the_limit(redis: Redis) -> None:
    over = await hit_many(redis, [("rl:force", 100, 60)], cost=150, force=True)
    assert not over.allowed
    # the debt must be waited off: 50 units over means 30 s before anything fits
    after = await hit(redis, "rl:force", 100, 60)
    assert not after.allowed
    assert after.retry_after == pytest.approx(30.6, abs=0.5)


async def test_several_limits_pass_together_or_not_at_all(redis: Redis) -> None:
    limits = [("rl:key", 3, 60), ("rl:user", 10, 60), ("rl:org", 5, 60)]
    outcomes = [await hit_many(redis, limits) for _ in range(4)]
    assert [o.allowed for o in outcomes] == [True, True, True, False]
    refused = outcomes[3]
    # the key limit refused; the others had room and reported it, nothing consumed
    assert [d.allowed for d in refused.decisions] == [False, True, True]
    assert refused.strictest().limit == 3
    assert refused.strictest().headers()["Retry-After"] == "20"
    org_only = await hit(redis, "rl:org", 5, 60, cost=0)
    assert org_only.remaining == 2
    # another key in the same org uses what is left of the org limit, then the org refuses
    other = [("rl:key2", 3, 60), ("rl:user", 10, 60), ("rl:org", 5, 60)]
    assert (await hit_many(redis, other)).allowed
    assert (await hit_many(redis, other)).allowed
    last = await hit_many(redis, other)
    assert not last.allowed
    assert last.strictest().limit == 5
    assert (await hit(redis, "rl:user", 10, 60, cost=0)).remaining == 5


async def test_strictest_reports_the_least_remaining(redis: Redis) -> None:
    result = await hit_many(redis, [("rl:a", 100, 60), ("rl:b", 10, 60)])
    assert result.allowed
    assert result.strictest().limit == 10
    assert result.strictest().remaining == 9


async def test_clients_sharing_one_redis_enforce_one_limit(infra: Infra, redis: Redis) -> None:
    clients = [Redis.from_url(infra.redis_url) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(hit(clients[i % 4], "rl:shared", 25, 60) for i in range(100))
        )
    finally:
        for c in clients:
            await c.aclose()
    assert sum(r.allowed for r in results) == 25


async def test_the_script_is_reloaded_after_a_flush(redis: Redis) -> None:
    assert (await hit(redis, "rl:reload", 2, 60)).allowed
    await redis.script_flush()
    assert (await hit(redis, "rl:reload", 2, 60)).allowed
    assert not (await hit(redis, "rl:reload", 2, 60)).allowed


async def test_keys_expire_once_replenished(redis: Redis) -> None:
    await hit(redis, "rl:ttl", 10, 60, cost=5)
    ttl = await redis.pttl("rl:ttl")
    assert 29_000 < ttl <= 31_000
    # a read does not create a key
    await hit(redis, "rl:none", 10, 60, cost=0)
    assert await redis.exists("rl:none") == 0


async def test_bad_arguments_are_refused(redis: Redis) -> None:
    with pytest.raises(ValueError):
        await hit(redis, "rl:bad", 0, 60)
    with pytest.raises(ValueError):
        await hit(redis, "rl:bad", 1, 60, cost=-1)
    assert (await hit_many(redis, [])).allowed


async def test_a_refund_gives_units_back_but_never_beyond_the_limit(redis: Redis) -> None:
    assert (await hit(redis, "rl:refund", 100, 3600, cost=70)).remaining == 30
    assert await refund_many(redis, [("rl:refund", 100, 3600)], 50) == (80,)
    ttl = await redis.pttl("rl:refund")
    assert 700_000 < ttl <= 721_000  # 20 units left to refill, 36 s each
    # more than was taken: the bucket is full, not fuller
    assert await refund_many(redis, [("rl:refund", 100, 3600)], 1000) == (100,)
    assert await redis.exists("rl:refund") == 0
    assert (await hit(redis, "rl:refund", 100, 3600, cost=100)).allowed
    assert not (await hit(redis, "rl:refund", 100, 3600)).allowed


async def test_a_refund_to_a_full_bucket_changes_nothing(redis: Redis) -> None:
    assert await refund_many(redis, [("rl:refund-none", 10, 60)], 5) == (10,)
    assert await redis.exists("rl:refund-none") == 0
    assert [(await hit(redis, "rl:refund-none", 10, 60)).allowed for _ in range(11)].count(
        True
    ) == 10


async def test_refilled_units_are_not_given_back_again(redis: Redis) -> None:
    # 10 per 0.5 s: once refilled, a late refund of the same units must not make it 20
    assert (await hit(redis, "rl:refund-late", 10, 0.5, cost=10)).allowed
    await asyncio.sleep(0.55)
    assert await refund_many(redis, [("rl:refund-late", 10, 0.5)], 10) == (10,)
    burst = [await hit(redis, "rl:refund-late", 10, 0.5) for _ in range(12)]
    assert sum(r.allowed for r in burst) <= 11  # 10, plus at most one refilled meanwhile


async def test_several_keys_are_refunded_in_one_call(redis: Redis) -> None:
    limits = [("rl:r-key", 100, 60), ("rl:r-org", 50, 60)]
    assert (await hit_many(redis, limits, 40)).allowed
    # one amount per key (a key's refunds and its organization's, summed over calls)
    assert await refund_many(redis, limits, [10, 30]) == (70, 40)
    assert await refund_many(redis, limits, 0) == (70, 40)  # reads only
    # units used by others meanwhile stay counted
    assert (await hit(redis, "rl:r-org", 50, 60, cost=30)).remaining == 10
    assert await refund_many(redis, limits, 25) == (95, 35)


async def test_a_refund_reduces_a_forced_overdraft(redis: Redis) -> None:
    await hit_many(redis, [("rl:r-over", 100, 60)], cost=150, force=True)
    assert await refund_many(redis, [("rl:r-over", 100, 60)], 30) == (0,)
    assert not (await hit(redis, "rl:r-over", 100, 60)).allowed
    assert await refund_many(redis, [("rl:r-over", 100, 60)], 60) == (40,)
    assert (await hit(redis, "rl:r-over", 100, 60, cost=40)).allowed


async def test_refunds_after_a_script_flush_and_bad_arguments(redis: Redis) -> None:
    await hit(redis, "rl:r-flush", 10, 60, cost=4)
    await redis.script_flush()
    assert await refund_many(redis, [("rl:r-flush", 10, 60)], 2) == (8,)
    assert await refund_many(redis, [], 1) == ()
    with pytest.raises(ValueError):
        await refund_many(redis, [("rl:r-bad", 10, 60)], -1)
    with pytest.raises(ValueError):
        await refund_many(redis, [("rl:r-bad", 10, 60)], [1, 2])
    with pytest.raises(ValueError):
        await refund_many(redis, [("rl:r-bad", 0, 60)], 1)


@pytest.mark.parametrize("limit", [1, 7, 60])
async def test_the_local_limiter_decides_as_redis_does(redis: Redis, limit: int) -> None:
    # the fallback while Redis is unavailable: the same answers, from process memory
    local = LocalLimiter()
    limits = [("rl:local:a", limit, 3600), ("rl:local:b", limit * 2, 3600)]
    for _ in range(limit + 2):
        remote = await hit_many(redis, limits)
        mine = local.hit_many(limits)
        assert mine.allowed == remote.allowed
        for a, b in zip(mine.decisions, remote.decisions, strict=True):
            assert (a.allowed, a.limit, a.remaining) == (b.allowed, b.limit, b.remaining)
            assert a.retry_after == pytest.approx(b.retry_after, abs=0.01)
            assert a.reset_seconds == pytest.approx(b.reset_seconds, abs=0.01)
    # refused: nothing consumed on the other limit; forced: counted anyway
    only_b = [("rl:local:b", limit * 2, 3600)]
    assert local.hit_many(only_b, 0).decisions[0].remaining == limit
    forced = local.hit_many(limits, force=True)
    assert not forced.allowed
    assert local.hit_many(only_b, 0).decisions[0].remaining == limit - 1
