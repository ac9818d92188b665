"""The tokens-per-minute reservation is settled on the real usage: what a call did not use
(a short answer to a big max_tokens, a failed or cancelled call) is given back."""

from __future__ import annotations

import asyncio
import uuid

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from libs.identity import Principal
from libs.ratelimit import hit_many
from libs.testing import principal
from tests.support.stacks.llm import Env

# estimated prompt: 3 priming + 4 framing + ceil(12 chars / 4) = 10 tokens
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 2+2?"}]
LIMIT = 200
# estimate 10 + 110 = 120 per call; the fake answers 12 + 28 = 40 tokens (set per test)
MAX_TOKENS = 110


def limited(limit: int = LIMIT) -> Principal:
    return principal(key_id=uuid.uuid4()).model_copy(update={"tpm_limit": limit})


def key_of(p: Principal) -> str:
    return f"llm:tpm:{{{p.org_id}}}:key:{p.key_id}"


async def remaining(env: Env, key: str, limit: int = LIMIT) -> int:
    return (await hit_many(env.redis, [(key, limit, 60)], 0)).decisions[0].remaining


async def test_unused_tokens_are_given_back(env: Env) -> None:
    env.primary.behavior.reply.completion_tokens = 28  # 40 tokens used of 120 reserved
    p = limited()
    client = env.sdk(p)
    # without refunds the second call would need 240 of 200; with them each costs 40
    for _ in range(3):
        await client.chat.completions.create(
            model="default", messages=MESSAGES, max_tokens=MAX_TOKENS
        )
        await env.service.drain()  # the refund is sent off the response path
    # 3 x 40 used (plus what refilled meanwhile, 200 per minute)
    assert 80 <= await remaining(env, key_of(p)) <= 90
    # the real usage still counts: 120 used + 120 reserved > 200
    with pytest.raises(openai.RateLimitError) as exc:
        await client.chat.completions.create(
            model="default", messages=MESSAGES, max_tokens=MAX_TOKENS
        )
    assert exc.value.code == "tokens_per_minute_exceeded"
    assert env.primary.chat_calls == 3


async def test_big_max_tokens_with_short_answers_keep_passing(env: Env) -> None:
    p = limited(10_000)
    client = env.sdk(p)
    # 4010 tokens reserved each, 19 used: without refunds the third would be refused
    for _ in range(8):
        await client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=4000)
        await env.service.drain()
    assert 10_000 - 8 * 19 <= await remaining(env, key_of(p), 10_000) <= 10_000
    assert env.primary.chat_calls == 8


async def test_a_streamed_answer_counts_its_real_usage(env: Env) -> None:
    env.primary.behavior.reply.completion_tokens = 28
    p = limited()
    stream = await env.sdk(p).chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 40
    await env.service.drain()
    assert 160 <= await remaining(env, key_of(p)) <= 165


@pytest.mark.parametrize("llm_overrides", [{"org_tpm_limit": 300}])
async def test_failed_calls_give_the_whole_reservation_back(env: Env) -> None:
    env.primary.behavior.status = 500
    p = limited()
    client = env.sdk(p)
    org_key = f"llm:tpm:{{{p.org_id}}}:org"
    # breaker_failures=3, one retry: 502, 502 (the breaker opens), then 503 (circuit open)
    statuses = []
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as exc:
            await client.chat.completions.create(
                model="default", messages=MESSAGES, max_tokens=MAX_TOKENS
            )
        statuses.append(exc.value.status_code)
        await env.service.drain()
        # nothing was used: the key and the org have their whole budget again
        assert await remaining(env, key_of(p)) == LIMIT
        assert await remaining(env, org_key, 300) == 300
    assert statuses == [502, 502, 503]
    assert await env.redis.exists(key_of(p), org_key) == 0


async def test_a_timed_out_call_gives_its_reservation_back(env: Env) -> None:
    env.primary.behavior.delay = 2.0
    p = limited()
    with pytest.raises(openai.APIStatusError) as exc:
        await env.sdk(p).chat.completions.create(
            model="default",
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            extra_headers={"x-aistack-timeout": "0.2"},
        )
    assert exc.value.status_code == 504
    await env.service.drain()
    assert await remaining(env, key_of(p)) == LIMIT


async def test_a_call_cancelled_before_any_token_gives_its_reservation_back(env: Env) -> None:
    env.primary.behavior.delay = 2.0
    p = limited()
    task = asyncio.create_task(
        env.sdk(p).chat.completions.create(
            model="default", messages=MESSAGES, max_tokens=MAX_TOKENS
        )
    )
    key = key_of(p)
    for _ in range(100):  # until the reservation is made and the upstream is waited on
        if env.primary.chat_calls:
            break
        await asyncio.sleep(0.02)
    assert await remaining(env, key) <= LIMIT - 120
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await env.service.drain()
    assert await remaining(env, key) == LIMIT


async def test_a_cached_answer_reserves_nothing(env: Env) -> None:
    env.primary.behavior.reply.completion_tokens = 28
    p = limited()
    client = env.sdk(p)
    first = await client.chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )
    assert first.headers["x-aistack-cache"] == "miss"
    await env.service.drain()
    before = await remaining(env, key_of(p))
    assert 160 <= before <= 165
    for _ in range(3):
        hit = await client.chat.completions.with_raw_response.create(
            model="default", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
        )
        assert hit.headers["x-aistack-cache"] == "hit"
    await env.service.drain()
    assert before <= await remaining(env, key_of(p)) <= before + 3
    assert env.primary.chat_calls == 1


@pytest.mark.parametrize("llm_overrides", [{"tpm_completion_reserve": 1}])
async def test_usage_beyond_the_reservation_is_still_counted(env: Env) -> None:
    env.primary.behavior.reply.completion_tokens = 45  # 57 used, 11 reserved
    p = limited(100)
    await env.sdk(p).chat.completions.create(model="default", messages=MESSAGES)
    await env.service.drain()
    assert 43 <= await remaining(env, key_of(p), 100) <= 45
