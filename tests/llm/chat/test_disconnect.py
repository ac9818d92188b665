"""A client that disconnects mid-stream cancels the upstream request (real sockets)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from libs.embedded import free_port
from libs.testing import Infra, auth_headers, principal
from libs.usage import USAGE_STREAM
from services.llm.app import build_app
from tests.support.fakes import openai_fake
from tests.support.stacks.llm import KEY_ENV, Upstream, routing, settings_for


@contextmanager
def serve_with_lifespan(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("llm app did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def test_client_disconnect_cancels_the_upstream(
    infra: Infra,
    redis: Redis,
    tmp_path: Path,
    primary: Upstream,
    backup: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    # the upstream sends its first chunks, then goes silent for 30 s
    primary.behavior.stall_after = 600
    settings = settings_for(tmp_path, routing(primary, backup), request_timeout_s=60)
    app = build_app(settings)
    body: dict[str, Any] = {
        "model": "default",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }
    with serve_with_lifespan(app) as url:
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            client.stream(
                "POST", "/v1/chat/completions", json=body, headers=auth_headers(principal())
            ) as resp,
        ):
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    break  # got a first chunk; now hang up
        started = time.monotonic()
        # the relay only finishes (and emits usage) once the upstream stream is closed
        while time.monotonic() - started < 5:
            if await redis.xlen(USAGE_STREAM):
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        assert await redis.xlen(USAGE_STREAM) == 1
        assert elapsed < 5, "the upstream was kept open after the client left"
