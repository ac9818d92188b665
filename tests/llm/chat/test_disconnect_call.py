"""A client that leaves a non-streaming call before its answer cancels the provider call: no
timeout later counts against the provider's breaker, the budget reserved for it is freed, the
call is recorded as cancelled (real sockets, the llm under uvicorn with libs.server's protocol).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from libs.budget import budget_key, spent
from libs.disconnect import CANCELLED
from libs.entitlements import Entitlements, Limits, publish
from libs.identity import Principal
from libs.testing import Infra, auth_headers, principal
from libs.usage import USAGE_STREAM
from services.llm.app import build_app
from services.llm.routing.breaker import State
from services.llm.state import LlmState
from tests.support.fakes import openai_fake
from tests.support.logs import recording
from tests.support.servers import Running, serve
from tests.support.stacks.llm import KEY_ENV, Upstream, routing, settings_for

PERIOD = "2026-12-01"
MESSAGES = [{"role": "user", "content": "Say hello"}]
CHAT: dict[str, Any] = {"model": "default", "messages": MESSAGES, "max_tokens": 50}
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", CHAT),
    # a stream whose provider has not answered yet: no response started either
    ("/v1/chat/completions", {**CHAT, "stream": True}),
    ("/v1/completions", {"model": "default", "prompt": "Say hello", "max_tokens": 50}),
    ("/v1/embeddings", {"model": "embed", "input": ["one", "two"]}),
    ("/v1/responses", {"model": "default", "input": "Say hello", "store": False}),
]
_IDS = ["completions", "embeddings", "responses"]


async def until(check: Callable[[], Any], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.fixture
async def llm(
    infra: Infra,
    redis: Redis,
    tmp_path: Path,
    primary: Upstream,
    backup: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[FastAPI, Running]]:
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    # a call left running would time out (2 s) and count against the breaker: 3 failures open it
    settings = settings_for(
        tmp_path, routing(primary, backup), request_timeout_s=2, entitlements_ttl_seconds=0
    )
    app = build_app(settings)
    server = await serve(app, http="libs.server:HttpProtocol")
    try:
        yield app, server
    finally:
        await server.stop()


async def usage_events(redis: Redis) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"e"]) for _, fields in await redis.xrange(USAGE_STREAM)]


async def budget_is(redis: Redis, key: str, events: list[dict[str, Any]]) -> bool:
    """The budget counter holds what ``events`` cost, nothing reserved left over."""
    return await spent(redis, key) == sum((Decimal(e["cost_usd"]) for e in events), Decimal(0))


def cancelled(path: str) -> float:
    return CANCELLED.labels("llm", path)._value.get()


async def hang_up(
    url: str, path: str, body: dict[str, Any], p: Principal, upstream: Upstream
) -> None:
    """Send the call, wait until the provider has it, then close the connection."""
    calls = len(upstream.behavior.requests)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        task = asyncio.create_task(client.post(path, json=body, headers=auth_headers(p)))

        async def reached() -> bool:
            return len(upstream.behavior.requests) > calls

        await until(reached, "the call never reached the provider")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(("path", "body"), CALLS, ids=["chat", "chat-stream", *_IDS])
async def test_a_client_that_leaves_cancels_the_provider_call(
    llm: tuple[FastAPI, Running],
    primary: Upstream,
    redis: Redis,
    path: str,
    body: dict[str, Any],
) -> None:
    app, server = llm
    p = principal()
    org = p.org_id
    assert org is not None
    budget = Decimal("5")
    await publish(
        redis,
        org,
        Entitlements(plan="pro", limits=Limits(monthly_spend_usd=budget), period_start=PERIOD),
    )
    key = budget_key(org, PERIOD)
    primary.behavior.delay = 4  # longer than the llm's timeout: the provider never answers
    before = cancelled(path)
    n = 4  # more than the breaker's threshold (3)
    with recording() as logs:
        for i in range(n):
            await hang_up(server.url, path, body, p, primary)

            async def noticed(i: int = i) -> bool:
                return cancelled(path) == before + i + 1

            await until(noticed, "the llm did not cancel the call of a client that left")
    # said in the llm's log, and in its access log as nginx's 499
    said = [r.getMessage() for r in logs.records]
    assert said.count(f"client went away: POST {path} cancelled before its answer") == n
    assert said.count(f"POST {path} 499") == n

    # the provider calls were cancelled, not left to time out: the breaker saw no failure
    breaker = LlmState.of_app(app).llm.dispatcher.breakers["primary"]
    assert breaker.state is State.CLOSED and breaker._failures == 0
    # each call recorded once, as cancelled, with the prompt the provider got (the least it
    # charges) and no answer; the budget holds what those cost, the worst cases given back
    service = LlmState.of_app(app).llm
    await service.drain()
    events = await usage_events(redis)
    assert [e["status"] for e in events] == ["cancelled"] * n
    assert all(e["prompt_tokens"] > 0 and e["completion_tokens"] == 0 for e in events)
    await until(lambda: budget_is(redis, key, events), "the budget was not settled")

    # another request still works, and counts what it really cost
    primary.behavior.delay = 0
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        resp = await client.post(path, json=body, headers=auth_headers(p))
    assert resp.status_code == 200, resp.text
    await service.drain()
    events = await usage_events(redis)
    assert [e["status"] for e in events] == ["cancelled"] * n + ["ok"]
    await until(lambda: budget_is(redis, key, events), "the answered call was not counted")
    assert cancelled(path) == before + n
