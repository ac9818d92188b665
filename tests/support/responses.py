"""Helpers of the Responses API tests: a strict function tool, the upstream's view of a call,
a streamed call's events validated one by one, the OpenAI error of a failed call, SQL on the
llm's database."""

from __future__ import annotations

import json
from typing import Any

import openai
from openai.types.responses import FunctionToolParam, ResponseStreamEvent
from pydantic import TypeAdapter
from sqlalchemy import text

from libs.state import AppState
from libs.testing import auth_headers
from tests.support.stacks.llm import Env

WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def upstream_body(env: Env) -> dict[str, Any]:
    chats = [r for r in env.primary.behavior.requests if r["path"].endswith("/chat/completions")]
    assert chats, "the upstream got no chat request"
    body: dict[str, Any] = chats[-1]["json"]
    return body


async def raw_events(env: Env, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The SSE events of a streamed call: ``event:`` names match, each validates."""
    events = []
    async with env.http.stream(
        "POST",
        "/v1/responses",
        json={**body, "stream": True},
        headers=auth_headers(env.principal),
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = (await resp.aread()).decode()
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        event = json.loads(data_line[6:])
        assert event["type"] == name_line[7:]
        EVENTS.validate_python(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def openai_error(exc: openai.APIStatusError) -> dict[str, Any]:
    err: dict[str, Any] = exc.response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    return err


async def run_sql(env: Env, sql: str, **params: Any) -> Any:
    async with AppState.of_app(env.app).db() as session:
        result = await session.execute(text(sql), params)
        await session.commit()
        return result


EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
