"""Budgets that hold under concurrency: each call reserves its worst case on the
organization's monthly budget (its plan's, published by billing) before the provider call,
atomically in Redis, and settles to its real cost after."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from redis.asyncio import Redis

from libs.budget import Reservation, budget_key, reserve, settle, spent, token_budget_key
from libs.entitlements import Entitlements, Limits, publish
from tests.support.stacks.llm import Env, LlmStack

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


async def test_a_thousand_concurrent_reservations_never_pass_the_budget(redis: Redis) -> None:
    key = "aistack:budget:{test}:org:2026-12-01"
    results = await asyncio.gather(
        *(reserve(redis, [(key, Decimal("1.00"))], Decimal("0.01")) for _ in range(1000))
    )
    admitted = [r for r in results if isinstance(r, Reservation)]
    assert len(admitted) == 100
    assert await spent(redis, key) == Decimal("1.00")
    # settled to their real cost: what they did not use is free again
    await asyncio.gather(*(settle(redis, r, Decimal("0.004")) for r in admitted))
    assert await spent(redis, key) == Decimal("0.4")
    # a budget and a key's budget: reserved on both or on neither
    small = "aistack:budget:{test}:key:k:2026-12-01"
    refused = await reserve(redis, [(key, Decimal(1)), (small, Decimal("0.001"))], Decimal("0.01"))
    assert not isinstance(refused, Reservation) and refused.index == 1
    assert await spent(redis, key) == Decimal("0.4") and await spent(redis, small) == 0


@pytest.fixture
def llm_overrides() -> dict[str, object]:
    # Redis given time to answer 100 reservations at once on a loaded machine
    return {"entitlements_ttl_seconds": 0, "redis_timeout_s": 3}


async def test_concurrent_chats_against_a_small_budget_never_overshoot(env: Env) -> None:
    org = env.principal.org_id
    assert org is not None
    budget = Decimal("0.0002")
    await publish(
        env.redis,
        org,
        Entitlements(
            plan="tiny", limits=Limits(monthly_spend_usd=budget), period_start="2026-12-01"
        ),
    )

    async def one() -> str:
        try:
            await env.client.chat.completions.create(
                model="default", messages=MESSAGES, max_tokens=10
            )
        except openai.RateLimitError as exc:
            # OpenAI's own answer for a used-up quota: what the SDKs' users already handle
            assert exc.code == "insufficient_quota"
            assert exc.body["type"] == "insufficient_quota"  # type: ignore[index]
            return "refused"
        except openai.InternalServerError as exc:
            # Redis too slow to answer the reservation (this test's 200 calls at once on a
            # shared machine): refused too, never served unchecked (budget_fail_mode closed)
            assert exc.status_code == 503 and exc.code == "budget_unavailable"
            return "unavailable"
        return "ok"

    assert await one() == "ok"  # the plan is read once (later reads may keep it)
    env.primary.behavior.delay = 0.2  # every call in flight at once
    outcomes = ["ok", *await asyncio.gather(*(one() for _ in range(200)))]
    admitted = outcomes.count("ok")
    # far fewer than asked pass: refused for the budget (or, on a machine too loaded for
    # Redis to answer in time, for not being checkable: never served unchecked)
    assert admitted < 100, outcomes
    events = [e for e in await env.usage_events() if e["status"] == "ok"]
    assert len(events) == admitted
    real = sum((Decimal(e["cost_usd"]) for e in events), Decimal(0))
    assert real <= budget
    # every reservation settled to the real cost (settlements run off the answer's path)
    key = budget_key(org, "2026-12-01")
    for _ in range(100):
        if await spent(env.redis, key) == real:
            break
        await asyncio.sleep(0.05)
    assert await spent(env.redis, key) == real


async def test_a_frozen_account_is_refused_with_account_frozen(env: Env) -> None:
    org = env.principal.org_id
    assert org is not None
    await publish(env.redis, org, Entitlements(plan="pro", status="frozen"))
    with pytest.raises(openai.APIStatusError) as caught:
        await env.client.chat.completions.create(model="default", messages=MESSAGES)
    assert caught.value.status_code == 402 and caught.value.code == "account_frozen"
    assert env.primary.chat_calls == 0  # refused before the provider
    await publish(env.redis, org, Entitlements(plan="pro"))
    resp = await env.client.chat.completions.create(model="default", messages=MESSAGES)
    assert resp.choices[0].message.content


async def _outcome(client: openai.AsyncOpenAI) -> str:
    """One chat: ok, or which budget refused it (its message says), or unavailable (Redis
    too slow on a loaded machine: refused, never served unchecked)."""
    try:
        await client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=10)
    except openai.RateLimitError as exc:
        assert exc.code == "insufficient_quota", exc.body
        assert exc.body["type"] == "insufficient_quota"  # type: ignore[index]
        return "refused:api_key" if "API key's" in exc.message else "refused:organization"
    except openai.InternalServerError as exc:
        assert exc.status_code == 503 and exc.code == "budget_unavailable"
        return "unavailable"
    return "ok"


async def _settled(env: Env, key: str, real: Decimal) -> Decimal:
    for _ in range(100):
        if await spent(env.redis, key) == real:
            break
        await asyncio.sleep(0.05)
    return await spent(env.redis, key)


async def test_an_api_keys_budget_holds_under_a_concurrent_race(env: Env) -> None:
    org = env.principal.org_id
    assert org is not None and env.principal.key_id is not None
    # the organization has room for everything; the key's own budget for a few calls
    await publish(
        env.redis,
        org,
        Entitlements(plan="pro", limits=Limits(monthly_spend_usd=100), period_start="2026-12-01"),
    )
    budget = Decimal("0.0001")
    capped = env.sdk(env.principal.model_copy(update={"monthly_budget_usd": budget}))
    other = env.sdk(env.principal.model_copy(update={"key_id": None}))  # a user, no key budget
    assert await _outcome(capped) == "ok"
    env.primary.behavior.delay = 0.2  # every call in flight at once
    outcomes = ["ok", *await asyncio.gather(*(_outcome(capped) for _ in range(100)))]
    admitted = outcomes.count("ok")
    assert "refused:api_key" in outcomes and admitted < 50, outcomes
    assert "refused:organization" not in outcomes
    events = [e for e in await env.usage_events() if e["status"] == "ok"]
    assert len(events) == admitted
    real = sum((Decimal(e["cost_usd"]) for e in events), Decimal(0))
    assert real <= budget
    # both counters hold the real spend once settled: one reservation on both, each call
    key_counter = budget_key(org, "2026-12-01", env.principal.key_id)
    assert await _settled(env, key_counter, real) == real
    assert await _settled(env, budget_key(org, "2026-12-01"), real) == real
    # the organization's other callers are not held by that key's budget
    env.primary.behavior.delay = 0
    assert await _outcome(other) == "ok"
    # the refusal says which budget, in OpenAI's error shape
    spent_key = env.sdk(env.principal.model_copy(update={"monthly_budget_usd": Decimal(0)}))
    with pytest.raises(openai.RateLimitError) as caught:
        await spent_key.chat.completions.create(model="default", messages=MESSAGES)
    assert caught.value.status_code == 429 and caught.value.code == "insufficient_quota"
    assert "API key's monthly budget of 0 USD is used up" in caught.value.message


async def test_a_plans_monthly_token_budget_is_enforced_like_spend(env: Env) -> None:
    org = env.principal.org_id
    assert org is not None
    # the fake answers 12 prompt + 7 completion tokens; a call reserves its estimate first
    await publish(
        env.redis,
        org,
        Entitlements(plan="tiny", limits=Limits(monthly_tokens=100), period_start="2026-12-01"),
    )
    outcomes = [await _outcome(env.client) for _ in range(8)]
    assert outcomes[0] == "ok" and outcomes[-1] == "refused:organization", outcomes
    events = [e for e in await env.usage_events() if e["status"] == "ok"]
    used = sum(e["prompt_tokens"] + e["completion_tokens"] for e in events)
    assert len(events) == outcomes.count("ok") and used <= 100
    assert int(await env.redis.get(token_budget_key(org, "2026-12-01")) or 0) == used
    with pytest.raises(openai.RateLimitError) as caught:
        await env.client.chat.completions.create(model="default", messages=MESSAGES)
    assert "monthly token budget of 100 tokens" in caught.value.message
    # overage allowed on the plan: the token budget does not block
    await publish(
        env.redis,
        org,
        Entitlements(
            plan="tiny",
            limits=Limits(monthly_tokens=100),
            overage="allow",
            period_start="2026-12-01",
        ),
    )
    assert await _outcome(env.client) == "ok"


@pytest.fixture
async def gw(openai_stack: LlmStack) -> LlmStack:
    return openai_stack


async def test_a_keys_budget_from_auth_reaches_the_llm_through_the_gateway(gw: LlmStack) -> None:
    """The budget set on the key (auth's introspection) travels with the principal."""
    key, _ = gw.auth.add_api_key(monthly_budget_usd="0")
    with pytest.raises(openai.RateLimitError) as caught:
        await gw.sdk(key).chat.completions.create(model="default", messages=MESSAGES)
    assert caught.value.code == "insufficient_quota"
    assert "API key's monthly budget of 0 USD" in caught.value.message
    roomy, _ = gw.auth.add_api_key(monthly_budget_usd="5")
    resp = await gw.sdk(roomy).chat.completions.create(model="default", messages=MESSAGES)
    assert resp.choices[0].message.content


async def _script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def test_calls_far_from_their_budget_skip_the_reservation_round_trip(env: Env) -> None:
    # the process admits a call from the counters Redis last answered while it stays clear of
    # the budget's last 10 % (LLM_BUDGET_EXACT_MARGIN); its reservation and its settlement
    # leave together in the next flush: far fewer script calls than calls
    org = env.principal.org_id
    assert org is not None
    limits = Limits(monthly_spend_usd=Decimal(100), monthly_tokens=10**9)
    await publish(
        env.redis, org, Entitlements(plan="pro", limits=limits, period_start="2026-12-01")
    )
    earlier = len(await env.usage_events())  # the stream holds other tests' events too
    assert await _outcome(env.client) == "ok"  # reserved in Redis: the counters are learned
    before = await _script_calls(env.redis)
    for _ in range(20):
        assert await _outcome(env.client) == "ok"
    calls = await _script_calls(env.redis) - before
    assert calls < 15, calls
    # the counters still end at the real spend and tokens
    events = (await env.usage_events())[earlier:]
    real = sum((Decimal(e["cost_usd"]) for e in events), Decimal(0))
    assert len(events) == 21 and all(e["status"] == "ok" for e in events) and real > 0
    assert await _settled(env, budget_key(org, "2026-12-01"), real) == real
    tokens = sum(e["prompt_tokens"] + e["completion_tokens"] for e in events)
    key = token_budget_key(org, "2026-12-01")
    for _ in range(100):
        if int(await env.redis.get(key) or 0) == tokens:
            break
        await asyncio.sleep(0.05)
    assert int(await env.redis.get(key) or 0) == tokens


async def test_near_its_limit_every_call_reserves_in_redis_and_the_budget_holds(env: Env) -> None:
    # one call at a time up to the budget: the first 90 % admitted from the process's book,
    # the rest reserved in Redis with the unsent reservations carried along; never past it
    org = env.principal.org_id
    assert org is not None
    budget = Decimal("0.0001")
    limits = Limits(monthly_spend_usd=budget)
    await publish(env.redis, org, Entitlements(plan="s", limits=limits, period_start="2026-12-01"))
    earlier = len(await env.usage_events())
    outcomes = [await _outcome(env.client) for _ in range(60)]
    assert "refused:organization" in outcomes and outcomes.count("ok") >= 2, outcomes
    events = [e for e in (await env.usage_events())[earlier:] if e["status"] == "ok"]
    real = sum((Decimal(e["cost_usd"]) for e in events), Decimal(0))
    assert len(events) == outcomes.count("ok") and real <= budget
    assert await _settled(env, budget_key(org, "2026-12-01"), real) == real


async def test_a_reservation_grants_a_lease_block_only_clear_of_the_exact_margin(
    redis: Redis,
) -> None:
    from libs.budget import BudgetLeases, Counted, adjust, reserve_counted

    key, other = "aistack:budget:{c}:org:2026-12-01", "aistack:budget:{c}:key:k:2026-12-01"
    leases = BudgetLeases(exact_margin=0.1, block_share=0.1, idle_s=1.0)
    budgets = [Counted(key, 1000, 30), Counted(other, 1000, 30)]
    blocks, lines = leases.asks(budgets)
    assert blocks == [300, 300] and lines == [900, 900]  # ten amounts > 10 % of the limit
    leases.answered(budgets, blocks)
    await redis.set(other, 600)
    got = await reserve_counted(redis, budgets, blocks=blocks, lines=lines)
    # granted on the first budget; the second would pass its 90 % line with it
    assert isinstance(got, Reservation) and got.granted == (300, 0)
    assert int(await redis.get(key) or 0) == 330 and int(await redis.get(other) or 0) == 630
    leases.grant(got.keys, got.granted, now=0.0)
    # a call on the first budget alone is covered ten times; on both, not (no block there)
    assert all(leases.take([Counted(key, 1000, 30)], now=0.1) for _ in range(10))
    assert not leases.take([Counted(key, 1000, 30)], now=0.2)
    assert not leases.take(budgets, now=0.2)
    # blocks unused for idle_s go back, all of them at shutdown
    leases.grant((key,), (50,), now=0.3)
    assert leases.release(now=1.0) == {}
    assert leases.release(now=1.4) == {key: -50}
    leases.grant((key,), (20,), now=2.0)
    back = leases.release()
    assert back == {key: -20}
    await adjust(redis, {key: -300})  # what the ten calls' settlements and the return do
    assert int(await redis.get(key) or 0) == 30
    # a budget refused is refused whatever the block
    refused = await reserve_counted(redis, [Counted(other, 1000, 400)], blocks=[10], lines=[900])
    assert refused == (0, 630)
    assert BudgetLeases(exact_margin=1).asks([Counted(key, 100, 1)]) == ([0], [100])


async def test_processes_holding_blocks_never_pass_a_budget_together(redis: Redis) -> None:
    # four processes' calls race against one budget, each admitting from its blocks when it
    # can: what they admit never passes the limit (the blocks are in the counter)
    from libs.budget import BudgetLeases, Counted, reserve_counted

    key = "aistack:budget:{race}:org:2026-12-01"
    limit, amount = 10_000, 7
    processes = [BudgetLeases(exact_margin=0.1, block_share=0.05) for _ in range(4)]
    admitted = 0

    async def call(leases: BudgetLeases) -> None:
        nonlocal admitted
        budget = [Counted(key, limit, amount)]
        if leases.take(budget, now=0.0):
            admitted += amount
            return
        blocks, lines = leases.asks(budget)
        got = await reserve_counted(redis, budget, blocks=blocks, lines=lines)
        leases.answered(budget, blocks)
        if isinstance(got, Reservation):
            leases.grant(got.keys, got.granted, now=0.0)
            admitted += amount

    for _ in range(40):  # waves of 100 calls at once
        await asyncio.gather(*(call(processes[i % 4]) for i in range(100)))
    held = sum(p.held[key][0] for p in processes if key in p.held)
    counter = int(await redis.get(key) or 0)
    assert counter == admitted + held <= limit
    # what the processes still hold is at most a block each: given back once idle
    assert held <= 4 * 500 and admitted >= limit - 4 * 500 - amount
