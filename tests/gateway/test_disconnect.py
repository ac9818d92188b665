"""A client that leaves a provider call at the gateway, before its answer: the gateway closes
its request to the llm and the llm cancels the provider call, so no timeout later counts
against the provider's breaker (real sockets: the fake OpenAI, the llm and the gateway)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.disconnect import CANCELLED
from libs.testing import Infra
from services.llm.routing.breaker import State
from services.llm.state import LlmState
from tests.support.stacks.llm import fake_openai_upstream, openai_behind_gateway

CHAT = {"model": "default", "messages": [{"role": "user", "content": "Say hello"}]}


def cancelled_at(service: str) -> float:
    """The requests ``service`` cancelled because their client left, every route."""
    return sum(
        sample.value
        for metric in CANCELLED.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("service") == service
    )


async def until(check: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/embeddings", {"model": "embed", "input": ["one", "two"]}),
    ],
    ids=["chat", "embeddings"],
)
async def test_a_client_leaving_the_gateway_cancels_the_provider_call(
    infra: Infra, tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    with fake_openai_upstream() as upstream:
        # a call left running would time out (2 s) and count against the breaker: 3 open it
        async with openai_behind_gateway(
            infra, tmp_path, upstream, llm={"request_timeout_s": 2}
        ) as stack:
            key, _ = stack.auth.add_api_key()
            upstream.behavior.delay = 4  # longer than the llm's timeout
            at_gateway, at_llm = cancelled_at("gateway"), cancelled_at("llm")
            n = 4
            for i in range(n):
                calls = len(upstream.behavior.requests)
                async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
                    headers = {"authorization": f"Bearer {key}"}
                    task = asyncio.create_task(client.post(path, json=body, headers=headers))
                    await until(
                        lambda c=calls: len(upstream.behavior.requests) > c,  # type: ignore[misc]
                        "the call never reached the provider",
                    )
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                await until(
                    lambda i=i: cancelled_at("llm") == at_llm + i + 1,  # type: ignore[misc]
                    "the llm did not cancel the call of a client that left the gateway",
                )
            assert cancelled_at("gateway") == at_gateway + n
            # cancelled, not left to time out: the provider's breaker saw no failure
            breaker = LlmState.of_app(stack.llm_app).llm.dispatcher.breakers["primary"]
            assert breaker.state is State.CLOSED and breaker._failures == 0

            upstream.behavior.delay = 0
            async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
                resp = await client.post(
                    path, json=body, headers={"authorization": f"Bearer {key}"}
                )
            assert resp.status_code == 200, resp.text
