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
from services.llm.breaker import KEY_PREFIX, State
from services.llm.service import LlmService
from tests.llm.api.conftest import KEY_ENV, Upstream, routing, settings_for
from tests.llm.fakes import openai_fake

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


@asynccontextmanager
async def llm_process(
    tmp_path: Path, primary: Upstream, backup: Upstream, **overrides: Any
) -> AsyncIterator[tuple[LlmService, openai.AsyncOpenAI]]:
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

        # after the cool-down a's trial call succeeds: closed in both
        primary.behavior.status = None
        await asyncio.sleep(1.05)
        await client_a.chat.completions.create(model="default", messages=MESSAGES)
        assert a.dispatcher.breakers["primary"].state is State.CLOSED
        await eventually(lambda: breaker_b.state is State.CLOSED)
        assert await redis.exists(KEY_PREFIX + "primary") == 0
        assert primary.chat_calls == 4, "b sent no trial call of its own"
        await client_b.chat.completions.create(model="default", messages=MESSAGES)
        assert primary.chat_calls == 5


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
