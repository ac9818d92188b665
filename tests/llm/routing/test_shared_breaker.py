"""Two llm processes (two apps) on one Redis share what their breakers learn; without Redis
each still protects itself."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from redis.asyncio import Redis

from libs.embedded import free_port
from libs.testing import Infra, auth_headers, principal, running
from libs.usage import UsageEvent
from services.llm.app import build_app
from services.llm.chat.service import ChatService
from services.llm.routing.breaker import CLOSED_MARK, KEY_PREFIX, State
from tests.support.fakes import openai_fake
from tests.support.stacks.llm import KEY_ENV, Upstream, routing, settings_for

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


@asynccontextmanager
async def llm_process(
    tmp_path: Path, primary: Upstream, backup: Upstream, **overrides: Any
) -> AsyncIterator[tuple[ChatService, openai.AsyncOpenAI]]:
    """One llm app with its own lifespan (providers, breakers, Redis clients)."""
    events: list[UsageEvent] = []

    async def publish(event: UsageEvent) -> None:
        events.append(event)

    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    app = build_app(
        settings_for(folder, routing(primary, backup), **overrides), usage_publisher=publish
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(app))
        http = await stack.enter_async_context(
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://llm.test")
        )
        client = openai.AsyncOpenAI(
            base_url="http://llm.test/v1",
            api_key="sk-aistack-unused",
            http_client=http,
            default_headers=auth_headers(principal()),
            max_retries=0,
        )
        yield app.state.llm, client


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_provider_found_down_by_one_process_is_skipped_by_the_other(
    infra: Infra,
    redis: Redis,
    tmp_path: Path,
    primary: Upstream,
    backup: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    async with (
        llm_process(tmp_path, primary, backup, breaker_open_s=1.0) as (a, client_a),
        llm_process(tmp_path, primary, backup, breaker_open_s=1.0) as (b, client_b),
    ):
        primary.behavior.status = 500
        # breaker_failures=3, one retry per request: a's second request opens it
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                await client_a.chat.completions.create(model="default", messages=MESSAGES)
        assert primary.chat_calls == 3
        breaker_b = b.dispatcher.breakers["primary"]
        await eventually(lambda: breaker_b.state is State.OPEN)

        # b never called the provider, yet skips it: straight to the backup, or 503
        raw = await client_b.chat.completions.with_raw_response.create(
            model="fallback", messages=MESSAGES
        )
        assert raw.headers["x-aistack-provider"] == "backup"
        with pytest.raises(openai.InternalServerError) as exc:
            await client_b.chat.completions.create(model="default", messages=MESSAGES)
        assert exc.value.status_code == 503
        assert exc.value.code == "providers_unavailable"
        assert primary.chat_calls == 3

        # both held calls back, so both asked for the trial: after the cool-down one of them
        # has it, and its trial call succeeds: closed in both
        primary.behavior.status = None
        breaker_a = a.dispatcher.breakers["primary"]
        await eventually(lambda: State.HALF_OPEN in (breaker_a.state, breaker_b.state))
        if breaker_a.state is State.HALF_OPEN:
            trial, other, other_client = client_a, breaker_b, client_b
        else:
            trial, other, other_client = client_b, breaker_a, client_a
        assert other.state is State.OPEN
        raw = await other_client.chat.completions.with_raw_response.create(
            model="fallback", messages=MESSAGES
        )
        assert raw.headers["x-aistack-provider"] == "backup", "no trial of its own"
        await trial.chat.completions.create(model="default", messages=MESSAGES)
        assert primary.chat_calls == 4
        await eventually(lambda: breaker_a.state is State.CLOSED and other.state is State.CLOSED)
        assert await redis.get(KEY_PREFIX + "primary") == CLOSED_MARK
        await other_client.chat.completions.create(model="default", messages=MESSAGES)
        assert primary.chat_calls == 5


async def test_after_the_cool_down_one_process_sends_the_trial_for_all(
    infra: Infra,
    tmp_path: Path,
    primary: Upstream,
    backup: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    async with (
        llm_process(tmp_path, primary, backup, breaker_open_s=0.5, retries=0) as (a, client_a),
        llm_process(tmp_path, primary, backup, breaker_open_s=0.5, retries=0) as (b, client_b),
        llm_process(tmp_path, primary, backup, breaker_open_s=0.5, retries=0) as (c, client_c),
    ):
        clients = (client_a, client_b, client_c)
        breakers = [s.dispatcher.breakers["primary"] for s in (a, b, c)]
        primary.behavior.status = 500
        # breaker_failures=3 in total: one failed call in each process opens it in all
        for client in clients:
            raw = await client.chat.completions.with_raw_response.create(
                model="fallback", messages=MESSAGES
            )
            assert raw.headers["x-aistack-provider"] == "backup"
        assert primary.chat_calls == 3
        await eventually(lambda: all(br.state is State.OPEN for br in breakers))

        # every process keeps calling through the cool-down and past it, but only one
        # trial call reaches the sick provider; it fails and opens the breaker again
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            for client in clients:
                raw = await client.chat.completions.with_raw_response.create(
                    model="fallback", messages=MESSAGES
                )
                assert raw.headers["x-aistack-provider"] == "backup"
            await asyncio.sleep(0.02)
        assert primary.chat_calls == 4, "one trial for the three processes"
        assert all(br.state is State.OPEN for br in breakers)


async def test_calls_and_breakers_work_without_redis(
    tmp_path: Path, primary: Upstream, backup: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    async with llm_process(tmp_path, primary, backup, redis_url=dead) as (service, client):
        assert time.monotonic() - started < 3
        reply = await client.chat.completions.create(model="default", messages=MESSAGES)
        assert reply.choices[0].message.content
        primary.behavior.status = 500
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model="default", messages=MESSAGES)
        assert service.dispatcher.breakers["primary"].state is State.OPEN
        raw = await client.chat.completions.with_raw_response.create(
            model="fallback", messages=MESSAGES
        )
        assert raw.headers["x-aistack-provider"] == "backup"
        assert primary.chat_calls == 4
