"""The wait for the next chunk of a stream is bounded (one timer per stream, not per chunk)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from libs.testing import auth_headers
from services.llm.chat.stream import IdleTimeout
from tests.support.stacks.llm import Env


async def test_wait_returns_in_time_and_times_out_when_idle() -> None:
    idle = IdleTimeout(0.2)
    try:
        # many quick waits over more than the timeout: the deadline moves with each one
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            assert await idle.wait(asyncio.sleep(0.02, result="chunk")) == "chunk"
        # time spent between waits (the client being slow) does not count
        await asyncio.sleep(0.3)
        assert await idle.wait(asyncio.sleep(0.01, result=1)) == 1
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await idle.wait(asyncio.sleep(5))
        assert 0.15 < time.monotonic() - started < 1.0
        # usable again afterwards, and the task is not left cancelled
        assert await idle.wait(asyncio.sleep(0.01, result=2)) == 2
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
    finally:
        idle.close()


async def test_an_outside_cancellation_stays_a_cancellation() -> None:
    idle = IdleTimeout(5)

    async def waiter() -> None:
        await idle.wait(asyncio.sleep(5))

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    idle.close()


async def test_a_stream_that_goes_silent_ends_with_a_timeout_error_event(env: Env) -> None:
    env.primary.behavior.stall_after = 600  # a few chunks, then silence for 30 s
    started = time.monotonic()
    resp = await env.http.post(
        "/v1/chat/completions",
        json={"model": "default", "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        headers={**auth_headers(env.principal), "x-aistack-timeout": "0.5"},
    )
    assert time.monotonic() - started < 5
    assert resp.status_code == 200
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert len(events) >= 2, "the chunks before the silence were relayed"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "timeout" and "timed out" in error["message"]
    [usage] = await env.usage_events()
    assert usage["status"] == "error"
