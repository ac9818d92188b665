"""Retries, fallback to the next target, the circuit breaker and timeouts."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from libs.telemetry import metrics_text
from tests.support.stacks.llm import Env

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


async def metric(env: Env, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` that carry ``labels`` (others may differ)."""
    text = metrics_text()  # the process's registry: what the metrics listener serves
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    ]
    if not values:
        raise AssertionError(f"{name}{{{want}}} not exported")
    return sum(values)


@pytest.mark.parametrize("status", [429, 500])
async def test_fallback_to_next_target(env: Env, status: int) -> None:
    env.primary.behavior.status = status
    before = (
        await metric(env, "aistack_llm_fallbacks_total", alias="fallback", provider="primary")
        if status == 500
        else None
    )
    raw = await env.client.chat.completions.with_raw_response.create(
        model="fallback", messages=MESSAGES
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "Hello there, how can I help?"
    assert raw.headers["x-aistack-provider"] == "backup"
    assert raw.headers["x-aistack-fallbacks"] == "1"
    assert env.primary.chat_calls == 2  # first try and one retry with backoff
    assert env.backup.chat_calls == 1
    assert env.backup.behavior.last["json"]["model"] == "gpt-4o"
    events = await env.usage_events()
    assert len(events) == 1
    ev = events[0]
    assert (ev["provider"], ev["model"], ev["status"]) == ("backup", "gpt-4o", "ok")
    # the target's own price: 12 * 2.5 / 1M + 7 * 10 / 1M
    assert Decimal(ev["cost_usd"]) == Decimal("0.00010000")
    if before is not None:
        after = await metric(
            env, "aistack_llm_fallbacks_total", alias="fallback", provider="primary"
        )
        assert after == before + 1


async def test_every_targets_failure_is_named(env: Env) -> None:
    """When the fallback fails too, the message names the first target's failure as well: it is
    often the one to fix (a key, a deployment), the fallback's only the last."""
    env.primary.behavior.status, env.primary.behavior.error_message = 500, "primary is broken"
    env.backup.behavior.status, env.backup.behavior.error_message = 500, "backup is broken"
    with pytest.raises(openai.InternalServerError) as exc:
        await env.client.chat.completions.create(model="fallback", messages=MESSAGES)
    assert exc.value.status_code == 502
    message = exc.value.message
    assert "every attempt failed" in message
    assert "primary is broken" in message and "backup is broken" in message
    assert message.index("primary/") < message.index("backup/")


async def test_streamed_fallback_before_first_chunk(env: Env) -> None:
    env.primary.behavior.status = 502
    stream = await env.client.chat.completions.create(
        model="fallback", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello there, how can I help?"
    assert env.backup.chat_calls == 1


async def test_breaker_opens_and_skips_the_failing_provider(env: Env) -> None:
    env.primary.behavior.status = 500
    # breaker_failures=3: the first request fails twice (try + retry), the second request's
    # first failure opens the breaker, so its retry is not sent
    for _ in range(2):
        await env.client.chat.completions.create(model="fallback", messages=MESSAGES)
    assert env.primary.chat_calls == 3
    assert await metric(env, "aistack_llm_breaker_state", provider="primary") == 2

    raw = await env.client.chat.completions.with_raw_response.create(
        model="fallback", messages=MESSAGES
    )
    assert raw.headers["x-aistack-provider"] == "backup"
    assert env.primary.chat_calls == 3, "an open breaker sends nothing upstream"
    assert env.backup.chat_calls == 3

    # the only target's breaker is open: 503, without calling it
    with pytest.raises(openai.InternalServerError) as exc:
        await env.client.chat.completions.create(model="default", messages=MESSAGES)
    assert exc.value.status_code == 503
    assert exc.value.code == "providers_unavailable"
    assert env.primary.chat_calls == 3


@pytest.mark.parametrize("llm_overrides", [{"breaker_open_s": 0.3}])
async def test_breaker_half_opens_after_cooldown(env: Env) -> None:
    breaker = env.service.dispatcher.breakers["primary"]
    env.primary.behavior.status = 500
    for _ in range(2):  # the second request's retry is held back: it asks for the trial
        await env.client.chat.completions.create(model="fallback", messages=MESSAGES)
    assert breaker.state.name == "OPEN"
    # cool-down over, and no other llm process claimed the trial: it is this one's
    deadline = time.monotonic() + 2
    while breaker.state.name != "HALF_OPEN":
        assert time.monotonic() < deadline, breaker.state
        await asyncio.sleep(0.01)
    env.primary.behavior.status = None
    raw = await env.client.chat.completions.with_raw_response.create(
        model="fallback", messages=MESSAGES
    )
    assert raw.headers["x-aistack-provider"] == "primary"
    assert breaker.state.name == "CLOSED"
    assert await metric(env, "aistack_llm_breaker_state", provider="primary") == 0


async def test_timeout_falls_back_and_is_capped_per_request(env: Env) -> None:
    env.primary.behavior.delay = 2.0
    raw = await env.client.chat.completions.with_raw_response.create(
        model="fallback", messages=MESSAGES, extra_headers={"x-aistack-timeout": "0.3"}
    )
    assert raw.headers["x-aistack-provider"] == "backup"

    with pytest.raises(openai.APIStatusError) as exc:
        await env.client.chat.completions.create(
            model="default", messages=MESSAGES, extra_body={"timeout": 0.3}
        )
    assert exc.value.status_code == 504
    assert exc.value.code == "upstream_timeout"


async def test_metrics(env: Env) -> None:
    async def value(name: str, **labels: str) -> float:
        try:
            return await metric(env, name, **labels) or 0.0
        except AssertionError:
            return 0.0

    prompt = {"provider": "primary", "model": "gpt-4o-mini", "kind": "prompt"}
    completion = {**prompt, "kind": "completion"}
    ttft = {"provider": "primary", "model": "gpt-4o-mini"}
    errors = {"provider": "primary", "model": "gpt-4o-mini"}
    before = [
        await value("aistack_llm_tokens_total", **prompt),
        await value("aistack_llm_tokens_total", **completion),
        await value("aistack_llm_time_to_first_token_seconds_count", **ttft),
        await value("aistack_llm_errors_total", **errors),
        await value("aistack_llm_cache_total", endpoint="chat", result="miss"),
        await value("aistack_http_request_duration_seconds_count", route="/v1/chat/completions"),
    ]
    await env.client.chat.completions.create(model="default", messages=MESSAGES, temperature=0)
    stream = await env.client.chat.completions.create(
        model="default", messages=MESSAGES, stream=True
    )
    _ = [c async for c in stream]
    env.primary.behavior.status = 500
    with pytest.raises(openai.InternalServerError):
        await env.client.chat.completions.create(model="default", messages=MESSAGES)
    await env.service.drain()
    after = [
        await value("aistack_llm_tokens_total", **prompt),
        await value("aistack_llm_tokens_total", **completion),
        await value("aistack_llm_time_to_first_token_seconds_count", **ttft),
        await value("aistack_llm_errors_total", **errors),
        await value("aistack_llm_cache_total", endpoint="chat", result="miss"),
        # the hot chat route is labelled as its route, not "unmatched"
        await value("aistack_http_request_duration_seconds_count", route="/v1/chat/completions"),
    ]
    assert [a - b for a, b in zip(after, before, strict=True)] == [24, 14, 1, 2, 1, 3]
