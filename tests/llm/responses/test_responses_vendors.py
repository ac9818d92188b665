"""``/v1/responses`` over providers that are not OpenAI (Anthropic and Gemini fakes speaking
their own wire formats, and the local model): their streams, translated to chat chunks by the
providers, become the same Responses events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from libs.testing import Infra
from services.llm.app import build_app
from tests.support.fakes import anthropic_fake, gemini_fake
from tests.support.fakes.vendor_common import Behavior, ToolCall, serve
from tests.support.stacks.llm import Env, Upstream, open_env, settings_for
from tests.support.stacks.vendors import (
    ANTHROPIC_KEY,
    ANTHROPIC_KEY_ENV,
    GEMINI_KEY,
    GEMINI_KEY_ENV,
)

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Upstream]]:
    anthropic, gemini = Behavior(), Behavior()
    with (
        serve(anthropic_fake.make_app(anthropic)) as a_url,
        serve(gemini_fake.make_app(gemini)) as g_url,
    ):
        yield {"claude": Upstream(a_url, anthropic), "gem": Upstream(g_url, gemini)}


@pytest.fixture
async def venv(
    infra: Infra,
    redis: Redis,
    tmp_path: Path,
    servers: dict[str, Upstream],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Env]:
    for upstream in servers.values():
        upstream.reset()
    monkeypatch.setenv(ANTHROPIC_KEY_ENV, ANTHROPIC_KEY)
    monkeypatch.setenv(GEMINI_KEY_ENV, GEMINI_KEY)
    config = {
        "providers": {
            "anthropic": {
                "kind": "anthropic",
                "base_url": servers["claude"].url,
                "api_key_env": ANTHROPIC_KEY_ENV,
                "timeout": 5,
            },
            "gemini": {
                "kind": "gemini",
                "base_url": servers["gem"].url,
                "api_key_env": GEMINI_KEY_ENV,
                "timeout": 5,
            },
            "local": {"kind": "local"},
        },
        "models": {
            "claude": {"targets": [{"provider": "anthropic", "model": anthropic_fake.MODEL}]},
            "gem": {"targets": [{"provider": "gemini", "model": gemini_fake.MODEL}]},
            "tiny": {
                "context_window": 2048,
                "targets": [{"provider": "local", "model": "smollm2-135m-instruct"}],
            },
        },
    }
    app = build_app(settings_for(tmp_path, config))
    async with open_env(app, servers["claude"], servers["gem"], redis) as env:
        yield env


@pytest.mark.parametrize("alias", ["claude", "gem"])
async def test_text_and_streamed_tool_calls(
    venv: Env, servers: dict[str, Upstream], alias: str
) -> None:
    behavior = servers[alias].behavior
    behavior.split = (1, 7)  # the vendor's bytes arrive in awkward pieces
    resp = await venv.client.responses.create(
        model=alias, instructions="Be brief.", input="Say hello"
    )
    assert resp.status == "completed" and resp.output_text == behavior.reply.text
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (
        behavior.reply.prompt_tokens,
        behavior.reply.completion_tokens,
    )

    behavior.reply.text = "Let me check."
    behavior.reply.tool_calls = [ToolCall("get_weather", {"city": "Paris"})]
    kinds: list[str] = []
    async with venv.client.responses.stream(
        model=alias, input="Weather in Paris?", tools=[WEATHER]
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_response()
    assert final.status == "completed"
    assert [o.type for o in final.output] == ["message", "function_call"]
    assert final.output_text == "Let me check."
    call = final.output[1]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert "response.function_call_arguments.done" in kinds
    assert kinds[-1] == "response.completed"
    assert final.usage is not None and final.usage.output_tokens > 0
    assert len(await venv.usage_events()) == 2


@pytest.mark.slow
async def test_local_model(venv: Env) -> None:
    resp = await venv.client.responses.create(
        model="tiny",
        input="Say hi",
        max_output_tokens=4,
        temperature=0,
        # loading the model on first use outlasts the fixture's 3 s idle timeout
        extra_headers={"x-aistack-timeout": "120"},
    )
    assert resp.output_text.strip()
    assert resp.status in ("completed", "incomplete")
    if resp.status == "incomplete":
        assert resp.incomplete_details is not None
        assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None and 0 < resp.usage.output_tokens <= 4

    async with venv.client.responses.stream(
        model="tiny",
        input="Say hi",
        max_output_tokens=4,
        temperature=0,
        extra_headers={"x-aistack-timeout": "120"},
    ) as stream:
        deltas, ends = [], []
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type in ("response.completed", "response.incomplete"):
                # (as with OpenAI, get_final_response() only takes a completed response)
                ends.append(event.response)
    [final] = ends
    assert final.status == resp.status
    assert "".join(deltas) == final.output_text == resp.output_text
    events = await venv.usage_events()
    assert len(events) == 2
    assert {(e["provider"], e["status"]) for e in events} == {("local", "ok")}
