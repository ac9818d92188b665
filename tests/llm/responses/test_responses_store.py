"""Stored responses of ``/v1/responses``: ``store``, ``previous_response_id``, ``GET``/``DELETE
/v1/responses/{id}`` and ``.../input_items``, driven by the real ``openai`` SDK against the llm
app (PostgreSQL for the store) in front of a fake OpenAI upstream that records requests."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from libs.testing import auth_headers, principal
from services.llm.responses import repository
from services.llm.responses.store import PENDING_WRITES, STORE_WAITS, STORED
from tests.support.fakes.vendor_common import ToolCall
from tests.support.responses import WEATHER, openai_error, raw_events, run_sql, upstream_body
from tests.support.stacks.llm import Env


def _texts(page: Any) -> list[tuple[str, str]]:
    """(role, first text) of listed message items, from their wire shape."""
    out = []
    for item in page.data:
        d = item.model_dump()
        out.append((d["role"], d["content"][0]["text"]))
    return out


def _stored(resp: Response) -> Any:
    return (resp.model_extra or {}).get("store", getattr(resp, "store", None))


async def test_two_turn_chain_sends_the_history_upstream(env: Env) -> None:
    env.primary.behavior.reply.text = "Paris."
    first = await env.client.responses.create(
        model="default", instructions="Answer in one word.", input="Capital of France?"
    )
    assert _stored(first) is True and first.previous_response_id is None
    # chained at once, without waiting: the write of this process is waited for
    env.primary.behavior.reply.text = "Berlin."
    second = await env.client.responses.create(
        model="default",
        instructions="Be terse.",
        input="And of Germany?",
        previous_response_id=first.id,
    )
    assert second.output_text == "Berlin."
    assert second.previous_response_id == first.id and second.id != first.id
    # the first turn's messages, not its instructions (OpenAI's rule)
    assert upstream_body(env)["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany?"},
    ]
    # a third turn gets both earlier ones, through the second alone
    env.primary.behavior.reply.text = "Rome."
    await env.client.responses.create(
        model="default",
        input=[{"role": "user", "content": "Italy?"}],
        previous_response_id=second.id,
    )
    assert upstream_body(env)["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany?"},
        {"role": "assistant", "content": "Berlin."},
        {"role": "user", "content": "Italy?"},
    ]
    # each turn bills as one chat call
    assert len(await env.usage_events()) == 3


async def test_retrieve_input_items_delete(env: Env) -> None:
    created = await env.client.responses.create(
        model="default",
        input=[
            {"role": "developer", "content": "Be kind."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you?"},
        ],
        metadata={"ticket": "7"},
    )
    got = await env.client.responses.retrieve(created.id)
    assert got.model_dump() == created.model_dump()
    # the stored object as sent, strictly a Responses ``Response``
    resp = await env.http.get(f"/v1/responses/{created.id}", headers=auth_headers(env.principal))
    assert resp.status_code == 200
    Response.model_validate(resp.json())
    assert resp.json()["metadata"] == {"ticket": "7"} and resp.json()["store"] is True

    page = await env.client.responses.input_items.list(created.id)
    # newest first by default, as OpenAI lists them
    assert _texts(page) == [
        ("user", "How are you?"),
        ("assistant", "Hello!"),
        ("user", "Hi"),
        ("developer", "Be kind."),
    ]
    assert page.data[1].model_dump()["content"][0]["type"] == "output_text"
    assert len({i.id for i in page.data}) == 4
    first = await env.client.responses.input_items.list(created.id, order="asc", limit=3)
    assert [t for _, t in _texts(first)] == ["Be kind.", "Hi", "Hello!"]
    wire = first.model_extra or {}
    assert first.has_more is True and wire["last_id"] == first.data[-1].id
    assert wire["first_id"] == first.data[0].id
    rest = await env.client.responses.input_items.list(
        created.id, order="asc", limit=3, after=wire["last_id"]
    )
    assert _texts(rest) == [("user", "How are you?")]
    assert rest.has_more is False
    # the SDK's auto-pagination walks the pages
    walked = [i.id async for i in env.client.responses.input_items.list(created.id, limit=1)]
    assert walked == [i.id for i in page.data]

    await env.client.responses.delete(created.id)  # the wire body is checked below
    with pytest.raises(openai.NotFoundError) as info:
        await env.client.responses.retrieve(created.id)
    err = openai_error(info.value)
    assert err["code"] == "response_not_found" and created.id in err["message"]
    with pytest.raises(openai.NotFoundError):
        await env.client.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError) as info:
        await env.client.responses.create(
            model="default", input="More", previous_response_id=created.id
        )
    err = openai_error(info.value)
    assert (err["code"], err["param"]) == ("response_not_found", "previous_response_id")
    assert created.id in err["message"]

    other = await env.client.responses.create(model="default", input="x")
    resp = await env.http.delete(f"/v1/responses/{other.id}", headers=auth_headers(env.principal))
    assert resp.status_code == 200
    assert resp.json() == {"id": other.id, "object": "response.deleted", "deleted": True}
    resp = await env.http.delete(f"/v1/responses/{other.id}", headers=auth_headers(env.principal))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "response_not_found"


async def test_another_organizations_response_is_not_found(env: Env) -> None:
    mine = await env.client.responses.create(model="default", input="Secret plan")
    stranger = env.sdk(principal(key_id=uuid.uuid4()))
    calls_before = env.primary.chat_calls
    with pytest.raises(openai.NotFoundError):
        await stranger.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        await stranger.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        await stranger.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError) as info:
        await stranger.responses.create(model="default", input="x", previous_response_id=mine.id)
    assert openai_error(info.value)["param"] == "previous_response_id"
    assert env.primary.chat_calls == calls_before
    # still there for its owner; another key of the same organization sees it too
    assert (await env.client.responses.retrieve(mine.id)).id == mine.id
    colleague = env.sdk(principal(org_id=env.principal.org_id, key_id=uuid.uuid4()))
    assert (await colleague.responses.retrieve(mine.id)).id == mine.id


async def test_store_false_stores_nothing(env: Env) -> None:
    resp = await env.client.responses.create(model="default", input="Hi", store=False)
    assert _stored(resp) is False
    await env.service.drain()
    with pytest.raises(openai.NotFoundError):
        await env.client.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError) as info:
        await env.client.responses.create(model="default", input="x", previous_response_id=resp.id)
    assert openai_error(info.value)["code"] == "response_not_found"
    count = await run_sql(env, "SELECT count(*) FROM llm.responses WHERE id = :id", id=resp.id)
    assert count.scalar() == 0


async def test_streamed_response_is_stored_and_chainable(env: Env) -> None:
    env.primary.behavior.reply.text = "Streamed answer"
    events = await raw_events(env, {"model": "default", "input": "Tell me"})
    completed = events[-1]
    assert completed["type"] == "response.completed"
    final = completed["response"]
    assert final["store"] is True
    got = await env.client.responses.retrieve(final["id"])
    assert got.output_text == "Streamed answer"
    assert got.model_dump(exclude_none=True) == Response.model_validate(final).model_dump(
        exclude_none=True
    )
    # chained from a streamed turn, itself streamed through the SDK helper
    env.primary.behavior.reply.text = "Second"
    async with env.client.responses.stream(
        model="default", input="Go on", previous_response_id=final["id"]
    ) as stream:
        second = await stream.get_final_response()
    assert second.previous_response_id == final["id"]
    assert upstream_body(env)["messages"] == [
        {"role": "user", "content": "Tell me"},
        {"role": "assistant", "content": "Streamed answer"},
        {"role": "user", "content": "Go on"},
    ]
    assert (await env.client.responses.retrieve(second.id)).output_text == "Second"


async def test_tool_call_chain(env: Env) -> None:
    """The agent loop: a function call, then only its output with previous_response_id."""
    env.primary.behavior.reply.tool_calls = [ToolCall("get_weather", {"city": "Paris"})]
    env.primary.behavior.reply.text = ""
    first = await env.client.responses.create(
        model="default", input="Weather in Paris?", tools=[WEATHER]
    )
    [call] = first.output
    assert call.type == "function_call"
    env.primary.behavior.reply.tool_calls = []
    env.primary.behavior.reply.text = "It is 21 degrees."
    second = await env.client.responses.create(
        model="default",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"t": 21}'}],
        tools=[WEATHER],
    )
    assert second.output_text == "It is 21 degrees."
    assert upstream_body(env)["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"t": 21}'},
    ]
    items = await env.client.responses.input_items.list(second.id)
    [item] = items.data
    assert item.type == "function_call_output" and item.call_id == call.call_id
    assert json.loads(item.output) == {"t": 21}  # type: ignore[arg-type]


async def test_expired_responses_are_invisible_and_purged(env: Env) -> None:
    old = await env.client.responses.create(model="default", input="Old")
    fresh = await env.client.responses.create(model="default", input="Fresh")
    await env.service.drain()
    ttl = await run_sql(
        env,
        "SELECT extract(epoch FROM expires_at - created_at) FROM llm.responses WHERE id = :id",
        id=fresh.id,
    )
    assert ttl.scalar() == 30 * 86400  # LLM_RESPONSES_TTL_DAYS
    await run_sql(
        env,
        "UPDATE llm.responses SET expires_at = now() - interval '1 second' WHERE id = :id",
        id=old.id,
    )
    with pytest.raises(openai.NotFoundError):
        await env.client.responses.retrieve(old.id)
    with pytest.raises(openai.NotFoundError):
        await env.client.responses.create(model="default", input="x", previous_response_id=old.id)
    assert await repository.purge(env.app.state.db) >= 1
    left = await run_sql(
        env, "SELECT id FROM llm.responses WHERE id IN (:a, :b)", a=old.id, b=fresh.id
    )
    assert [r[0] for r in left] == [fresh.id]


async def test_a_failed_write_is_counted_and_the_answer_unharmed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("database went away")

    monkeypatch.setattr(repository, "save", broken)
    errors = STORED.labels("error")._value.get()
    resp = await env.client.responses.create(model="default", input="Hi")
    assert resp.output_text and _stored(resp) is True
    await env.service.drain()
    assert STORED.labels("error")._value.get() == errors + 1
    monkeypatch.undo()
    with pytest.raises(openai.NotFoundError) as info:
        await env.client.responses.create(model="default", input="x", previous_response_id=resp.id)
    assert openai_error(info.value)["code"] == "response_not_found"


async def test_idempotent_replay_keeps_one_stored_response(env: Env) -> None:
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = await env.client.responses.create(model="default", input="Hi", extra_headers=headers)
    again = await env.client.responses.create(model="default", input="Hi", extra_headers=headers)
    assert again.id == first.id
    await env.service.drain()
    count = await run_sql(env, "SELECT count(*) FROM llm.responses WHERE id = :id", id=first.id)
    assert count.scalar() == 1


async def test_openapi_lists_the_routes(env: Env) -> None:
    paths = (await env.http.get("/openapi.json")).json()["paths"]
    assert {"get", "delete"} <= set(paths["/v1/responses/{response_id}"])
    assert "get" in paths["/v1/responses/{response_id}/input_items"]
    params = {
        p["name"] for p in paths["/v1/responses/{response_id}/input_items"]["get"]["parameters"]
    }
    assert {"limit", "order", "after"} <= params


async def test_chaining_waits_for_a_write_still_in_flight(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next turn may arrive before the previous one is written: in this process the
    write is waited for; one another process is writing is looked up again briefly."""
    real_save = repository.save

    async def slow_save(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.3)
        await real_save(*args, **kwargs)

    monkeypatch.setattr(repository, "save", slow_save)
    first = await env.client.responses.create(model="default", input="One")
    second = await env.client.responses.create(
        model="default", input="Two", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert [m["content"] for m in upstream_body(env)["messages"]] == [
        "One",
        "Hello there, how can I help?",
        "Two",
    ]
    monkeypatch.undo()

    # another process's write, landing 0.1 s after the chained request arrives
    other_id = "resp_" + uuid.uuid4().hex
    org_id = env.principal.org_id
    assert org_id is not None

    async def other_process() -> None:
        await asyncio.sleep(0.1)
        response = (await env.client.responses.retrieve(first.id)).model_dump()
        await repository.save(
            env.app.state.db,
            response={**response, "id": other_id},
            org_id=org_id,
            user_id=None,
            key_id=None,
            input_items=[],
            history=[{"role": "user", "content": "From elsewhere"}],
            ttl_days=1,
        )

    writer = asyncio.create_task(other_process())
    await env.client.responses.create(model="default", input="Three", previous_response_id=other_id)
    await writer
    assert [m["content"] for m in upstream_body(env)["messages"]] == ["From elsewhere", "Three"]


# ------------------------------------------------------------------ streams that do not complete


def _text(response: dict[str, Any]) -> str:
    return "".join(
        part.get("text", "")
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
    )


async def test_stream_broken_midway_is_stored_as_failed(env: Env) -> None:
    env.primary.behavior.break_after = 700  # a few chunks, then the connection drops
    events = await raw_events(env, {"model": "default", "input": "Say hello"})
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    said = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert said and "Hello there, how can I help?".startswith(said)

    # retrievable at once (this process's write is waited for), as OpenAI keeps it
    got = await env.client.responses.retrieve(failed["id"])
    assert got.status == "failed" and got.error is not None
    assert got.error.code == "server_error" and "Upstream stream failed" in got.error.message
    assert got.output_text == said  # the partial output, as the client saw it
    assert got.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert got.usage is None  # the provider never sent it
    wire = await env.http.get(f"/v1/responses/{failed['id']}", headers=auth_headers(env.principal))
    assert wire.json() == failed
    Response.model_validate(wire.json())
    items = await env.client.responses.input_items.list(failed["id"])
    assert _texts(items) == [("user", "Say hello")]

    # an agent may chain from it: what was said so far is history
    env.primary.behavior.break_after = None
    await env.client.responses.create(
        model="default", input="Go on", previous_response_id=failed["id"]
    )
    assert upstream_body(env)["messages"] == [
        {"role": "user", "content": "Say hello"},
        {"role": "assistant", "content": said},
        {"role": "user", "content": "Go on"},
    ]


async def test_stream_broken_inside_a_tool_call_is_stored(env: Env) -> None:
    """The unfinished call is kept in the stored response, and left out of the history a
    chained turn sends (its arguments are cut short; a provider refuses a tool call with no
    tool result after it)."""
    env.primary.behavior.reply.text = ""
    env.primary.behavior.reply.tool_calls = [ToolCall("get_weather", {"city": "Paris"})]
    env.primary.behavior.break_after = 700  # inside the tool call
    events = await raw_events(env, {"model": "default", "input": "Weather?", "tools": [WEATHER]})
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    got = await env.client.responses.retrieve(failed["id"])
    assert got.status == "failed"
    [call] = got.output
    assert call.type == "function_call" and call.status == "incomplete"
    assert call.name == "get_weather"
    env.primary.behavior.break_after = None
    env.primary.behavior.reply.tool_calls = []
    await env.client.responses.create(
        model="default", input="Try again", previous_response_id=failed["id"]
    )
    assert upstream_body(env)["messages"] == [
        {"role": "user", "content": "Weather?"},
        {"role": "user", "content": "Try again"},
    ]


async def test_stream_cut_by_max_output_tokens_is_stored_incomplete(env: Env) -> None:
    env.primary.behavior.reply.stop = "length"
    events = await raw_events(env, {"model": "default", "input": "Story", "max_output_tokens": 7})
    final = events[-1]["response"]
    got = await env.client.responses.retrieve(final["id"])
    assert got.status == "incomplete" and got.incomplete_details is not None
    assert got.incomplete_details.reason == "max_output_tokens"
    assert got.usage is not None and got.usage.output_tokens == 7


async def test_store_false_keeps_no_failed_stream(env: Env) -> None:
    env.primary.behavior.break_after = 700
    events = await raw_events(env, {"model": "default", "input": "Hi", "store": False})
    assert events[-1]["type"] == "response.failed"
    await env.service.drain()
    count = await run_sql(
        env, "SELECT count(*) FROM llm.responses WHERE id = :id", id=events[-1]["response"]["id"]
    )
    assert count.scalar() == 0


# ------------------------------------------------------------------ bounded pending writes


def _slow_save(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    real_save = repository.save

    async def slow_save(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(seconds)
        await real_save(*args, **kwargs)

    monkeypatch.setattr(repository, "save", slow_save)


async def _is_stored(env: Env, response_id: str) -> bool:
    """In PostgreSQL now (not through GET, which waits for this process's writes)."""
    count = await run_sql(env, "SELECT count(*) FROM llm.responses WHERE id = :id", id=response_id)
    return bool(count.scalar())


async def test_writes_below_the_bound_do_not_hold_the_answer(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slow_save(monkeypatch, 0.5)
    waits = STORE_WAITS._value.get()
    resp = await env.client.responses.create(model="default", input="Hi")
    assert not await _is_stored(env, resp.id)  # answered while the write is in flight
    assert PENDING_WRITES._value.get() >= 1
    await env.service.drain()
    assert await _is_stored(env, resp.id)
    assert STORE_WAITS._value.get() == waits
    assert PENDING_WRITES._value.get() == 0


@pytest.mark.parametrize("llm_overrides", [{"responses_max_pending_writes": 1}])
async def test_past_the_bound_the_request_waits_for_its_write(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each write outlasts the next request by far, even on a loaded machine (at 0.5 s, the
    # streamed fourth request once took longer than the third's write, so found none pending)
    _slow_save(monkeypatch, 1.5)
    waits = STORE_WAITS._value.get()
    first = await env.client.responses.create(model="default", input="One")
    assert not await _is_stored(env, first.id)  # one write in flight: within the bound
    # the second finds one pending: it answers only once its own write is in PostgreSQL
    second = await env.client.responses.create(model="default", input="Two")
    assert await _is_stored(env, second.id)
    assert STORE_WAITS._value.get() == waits + 1
    # a stream too: its last event comes after the write
    third_first = await env.client.responses.create(model="default", input="Three")
    events = await raw_events(env, {"model": "default", "input": "Four"})
    assert events[-1]["type"] == "response.completed"
    assert await _is_stored(env, events[-1]["response"]["id"])
    assert STORE_WAITS._value.get() == waits + 2
    await env.service.drain()
    assert await _is_stored(env, first.id) and await _is_stored(env, third_first.id)


@pytest.mark.parametrize("llm_overrides", [{"responses_max_pending_writes": 0}])
async def test_a_bound_of_zero_stores_before_answering(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slow_save(monkeypatch, 0.2)
    waits = STORE_WAITS._value.get()
    resp = await env.client.responses.create(model="default", input="Hi")
    assert await _is_stored(env, resp.id)
    env.primary.behavior.break_after = 700  # a failed stream is waited for too
    events = await raw_events(env, {"model": "default", "input": "Hi"})
    assert events[-1]["type"] == "response.failed"
    assert await _is_stored(env, events[-1]["response"]["id"])
    assert STORE_WAITS._value.get() == waits + 2
