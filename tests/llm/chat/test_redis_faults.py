"""The llm service with its Redis hung (SIGSTOP) or killed: calls are answered at once with the
decided behaviour, never after the 5 s socket timeout per Redis call; once Redis is back it is
used again.

Decided per call site (services/llm/chat/metering.py, repository.py): the TPM limit fails open
to per-process limits, the response cache is skipped (a miss), a request with an Idempotency-Key
is refused with 503 before it runs (running it unclaimed could run a retry twice).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from libs.redis import make_redis
from libs.testing import Infra, auth_headers, principal
from services.llm.app import build_app
from tests.support.fakes import openai_fake
from tests.support.faults.redis import FaultyRedis, eventually, faulty_redis
from tests.support.stacks.llm import KEY_ENV, Env, Upstream, open_env, routing, settings_for

# a functional bound for "did not wait on Redis" (one Redis call used to wait 5 s): generous,
# not a benchmark
QUICK_S = 2.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FaultyRedis]:
    with faulty_redis(tmp_path / "redis") as redis:
        yield redis


@pytest.fixture
async def env(
    infra: Infra,
    tmp_path: Path,
    server: FaultyRedis,
    primary: Upstream,
    backup: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Env]:
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    settings = settings_for(
        tmp_path,
        routing(primary, backup),
        redis_url=server.url,
        redis_timeout_s=0.2,
        redis_retry_s=0.3,
        org_tpm_limit=1_000_000,
    )
    redis = make_redis(server.url)
    try:
        async with open_env(build_app(settings), primary, backup, redis) as env:
            yield env
    finally:
        server.resume()
        await redis.aclose()


def _body(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "default",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        **extra,
    }


async def _chat(env: Env, body: dict[str, Any], **headers: str) -> httpx.Response:
    started = time.monotonic()
    resp = await env.http.post(
        "/v1/chat/completions", json=body, headers={**auth_headers(env.principal), **headers}
    )
    took = time.monotonic() - started
    assert took < QUICK_S, f"took {took:.2f}s"
    return resp


@pytest.mark.parametrize("fault", ["hung", "killed"])
async def test_calls_do_not_wait_on_a_sick_redis_and_recover(
    env: Env, server: FaultyRedis, fault: str
) -> None:
    env.principal = principal(key_id=uuid.uuid4()).model_copy(update={"tpm_limit": 100_000})
    resp = await _chat(env, _body("warm"))
    assert resp.status_code == 200 and resp.headers["x-aistack-cache"] == "miss"
    await env.service.drain()
    assert (await _chat(env, _body("warm"))).headers["x-aistack-cache"] == "hit"
    calls = env.primary.chat_calls

    server.hang() if fault == "hung" else server.kill()
    try:
        started = time.monotonic()
        for _ in range(5):
            # TPM fails open (per process); the cache is skipped: every call is a miss
            resp = await _chat(env, _body("warm"))
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-aistack-cache"] == "miss"
        assert env.primary.chat_calls == calls + 5
        # five calls, at most one Redis deadline in all (and the cache writes don't block)
        assert time.monotonic() - started < QUICK_S

        # streamed too
        resp = await _chat(env, _body("stream me", stream=True))
        assert resp.status_code == 200 and resp.text.rstrip().endswith("data: [DONE]")

        # an Idempotency-Key cannot be honoured: refused before anything runs, OpenAI-shaped
        before = env.primary.chat_calls
        resp = await _chat(env, _body("pay once"), **{"Idempotency-Key": "order-7"})
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "1"
        err = resp.json()["error"]
        assert err["code"] == "idempotency_unavailable" and err["type"] == "api_error"
        assert env.primary.chat_calls == before
        with pytest.raises(openai.InternalServerError) as exc:
            await env.client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": "pay once"}],
                extra_headers={"Idempotency-Key": "order-8"},
            )
        assert exc.value.status_code == 503 and exc.value.code == "idempotency_unavailable"
        assert env.service.guard.up is False
    finally:
        server.resume() if fault == "hung" else server.start()

    async def back() -> bool:
        return env.service.guard.up

    await eventually(back)
    first = await _chat(env, _body("pay once"), **{"Idempotency-Key": "order-7"})
    assert first.status_code == 200, first.text
    await env.service.drain()
    again = await _chat(env, _body("pay once"), **{"Idempotency-Key": "order-7"})
    assert again.headers["x-aistack-idempotent-replay"] == "true"
    assert again.json()["id"] == first.json()["id"]
    # the cache is used again
    await _chat(env, _body("cached again"))
    await env.service.drain()
    assert (await _chat(env, _body("cached again"))).headers["x-aistack-cache"] == "hit"


async def test_a_result_finished_during_an_outage_is_stored_once_redis_is_back(
    env: Env, server: FaultyRedis
) -> None:
    """The claim was taken, then Redis hung before the result could be stored: it is stored
    when Redis answers again, so the retry gets the first result instead of a second run."""
    env.primary.behavior.delay = 0.5
    headers = {**auth_headers(env.principal), "Idempotency-Key": "slow-1"}
    body = _body("slow")

    task = asyncio.ensure_future(env.http.post("/v1/chat/completions", json=body, headers=headers))
    await asyncio.sleep(0.2)  # claimed, waiting on the provider
    server.hang()
    try:
        first = await task
        assert first.status_code == 200, first.text
        await asyncio.sleep(0.3)
    finally:
        server.resume()
    await env.service.drain()  # the store waited for Redis, then wrote
    calls = env.primary.chat_calls
    env.primary.behavior.delay = 0
    again = await env.http.post("/v1/chat/completions", json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.headers["x-aistack-idempotent-replay"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert env.primary.chat_calls == calls
