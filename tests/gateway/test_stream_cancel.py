"""A client that leaves a chat stream early, through the gateway: the upstream request is
cancelled, and billing records one usage event with status ``cancelled`` that charges the
prompt and the tokens streamed until then."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from libs.testing import Infra, auth_headers, client_for, principal
from libs.usage import USAGE_STREAM
from services.billing.app import build_app as build_billing
from services.billing.models import UsageEventRecord
from services.llm.app import build_app as build_llm
from tests.support.fakes import openai_fake
from tests.support.fakes.vendor_common import serve as serve_thread
from tests.support.ledger import drain_stream, stream_events
from tests.support.servers import serve
from tests.support.stacks.llm import KEY_ENV, llm_behind_gateway, settings_for

CHUNKS = 400  # at 20 ms each: 8 s, far longer than the test waits for anything


class SlowStreams:
    """A slow OpenAI chat stream (one word every 20 ms), telling how each one ended."""

    def __init__(self, first_delay: float = 0.0) -> None:
        self.first_delay = first_delay
        self.started = threading.Event()
        self.ended = threading.Event()
        self.sent = 0
        self.completed = False

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = await request.json()
            if request.headers.get("authorization") != f"Bearer {openai_fake.API_KEY}":
                return JSONResponse(openai_fake.error_body(401, "Incorrect API key"), 401)
            assert body.get("stream") is True
            return StreamingResponse(self._events(body["model"]), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])

    async def _events(self, model: str) -> AsyncIterator[bytes]:
        base = {
            "id": "chatcmpl-slow",
            "object": "chat.completion.chunk",
            "created": openai_fake.CREATED,
            "model": model,
            "system_fingerprint": "fp_slow",
        }
        self.started.set()
        try:
            await asyncio.sleep(self.first_delay)  # a slow first token
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            yield _sse({**base, "choices": [{**first, "finish_reason": None}]})
            for i in range(CHUNKS):
                delta = {"content": f"word{i} "}
                choice = {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}
                yield _sse({**base, "choices": [choice]})
                self.sent += 1
                await asyncio.sleep(0.02)
            last = {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
            yield _sse({**base, "choices": [last]})
            yield b"data: [DONE]\n\n"
            self.completed = True
        finally:
            self.ended.set()


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@pytest.fixture
def slow() -> Iterator[tuple[SlowStreams, str]]:
    streams = SlowStreams()
    with serve_thread(streams.app()) as url:
        yield streams, url


def _routing(url: str) -> dict[str, Any]:
    provider = {"kind": "openai", "base_url": f"{url}/v1", "api_key_env": KEY_ENV, "timeout": 30}
    return {
        "providers": {"slow": provider},
        "models": {
            "default": {
                "price": {"input": 0.15, "output": 0.60},
                "targets": [{"provider": "slow", "model": "gpt-4o-mini"}],
            }
        },
    }


async def test_an_abandoned_stream_is_billed_as_cancelled(
    infra: Infra,
    redis: Redis,
    engine: AsyncEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    slow: tuple[SlowStreams, str],
) -> None:
    streams, url = slow
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    async with llm_behind_gateway(infra, tmp_path, _routing(url)) as path:
        key, info = path.auth.add_api_key()
        client = path.sdk(key, timeout=30)
        stream = await client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Count slowly"}], stream=True
        )
        text, request_id = "", ""
        async for chunk in stream:
            request_id = chunk.id
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
            if text.count("word") >= 5:
                break
        await stream.close()  # hang up
        left = time.monotonic()

        # the upstream request was cancelled, not left to run to its end
        assert await asyncio.to_thread(streams.ended.wait, 5)
        assert not streams.completed and streams.sent < CHUNKS
        assert time.monotonic() - left < 5

        # one usage event, once the relay has closed its end
        for _ in range(100):
            if await redis.xlen(USAGE_STREAM):
                break
            await asyncio.sleep(0.05)
        assert await redis.xlen(USAGE_STREAM) == 1

    assert await drain_stream(redis, async_sessionmaker(engine, expire_on_commit=False)) == 1
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(UsageEventRecord).where(UsageEventRecord.request_id == request_id)
            )
        ).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.status == "cancelled"
    assert str(row.org_id) == info["org_id"] and str(row.key_id) == info["key_id"]
    assert row.prompt_tokens > 0
    # what reached the client at least (about a token per word), not what was never sent
    assert len(text) // 4 <= row.completion_tokens < CHUNKS
    assert row.cost_usd > Decimal(0)

    # and the organization's usage report shows it
    owner = principal(org_id=uuid.UUID(info["org_id"]), scopes=["billing:read"])
    async with client_for(build_billing()) as billing:
        resp = await billing.get("/v1/billing/usage", headers=auth_headers(owner))
    assert resp.status_code == 200, resp.text
    totals = resp.json()["totals"]
    assert totals["requests"] == 1 and totals["cancelled"] == 1 and totals["errors"] == 0
    assert totals["completion_tokens"] == row.completion_tokens
    assert Decimal(totals["cost_usd"]) == row.cost_usd


async def test_a_client_gone_before_the_first_token_is_billed_and_closes_the_upstream(
    infra: Infra, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the client leaves while the service still waits for the first token: when it comes,
    # the answer starts to nobody; the relay must still run its end (close, bill)
    streams = SlowStreams(first_delay=1.0)
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    with serve_thread(streams.app()) as url:
        llm = await serve(build_llm(settings_for(tmp_path, _routing(url))))
        try:
            body = {
                "model": "default",
                "messages": [{"role": "user", "content": "Count slowly"}],
                "stream": True,
            }
            async with httpx.AsyncClient(base_url=llm.url, timeout=10) as client:
                request = client.post(
                    "/v1/chat/completions", json=body, headers=auth_headers(principal())
                )
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(request, 0.3)
            assert await asyncio.to_thread(streams.ended.wait, 5), "upstream left open"
            assert not streams.completed
            for _ in range(100):
                if await redis.xlen(USAGE_STREAM):
                    break
                await asyncio.sleep(0.05)
            events = await stream_events(redis)
            assert len(events) == 1
        finally:
            await llm.stop()
    event = events[0]
    assert event["status"] == "cancelled"
    assert event["prompt_tokens"] > 0
