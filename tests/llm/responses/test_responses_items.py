"""Input items of ``/v1/responses`` beyond plain messages: ``item_reference`` (resolved
against the organization's stored responses) and what OpenAI's SDKs and the Agents SDK send
back as history (output items with ids, annotations and logprobs, reasoning items with
encrypted content), plus the clear refusals of what cannot be served. Driven by the real
``openai`` SDK against the llm app (PostgreSQL, Redis) in front of a fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import openai
import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from libs.testing import auth_headers, principal
from services.llm.responses import repository
from tests.support.fakes.vendor_common import ToolCall
from tests.support.responses import WEATHER, openai_error, run_sql, upstream_body
from tests.support.stacks.llm import Env


def _dump(items: Any) -> Any:
    """Output items as a client sends them back (the SDK's models, as dicts)."""
    return [i.model_dump(exclude_none=True) for i in items]


def ref(item_id: str | None) -> Any:
    """An ``item_reference`` input item."""
    return {"type": "item_reference", "id": item_id}


# ------------------------------------------------------------------------------ item_reference


async def test_references_to_output_and_input_items(env: Env) -> None:
    env.primary.behavior.reply.text = "Paris."
    first = await env.client.responses.create(
        model="default", input=[{"role": "user", "content": "Capital of France?"}]
    )
    [asked] = (await env.client.responses.input_items.list(first.id)).data
    [answer] = first.output
    calls = env.primary.chat_calls

    env.primary.behavior.reply.text = "Berlin."
    second = await env.client.responses.create(
        model="default",
        input=[
            ref(asked.id),
            {"id": answer.id},  # type: ignore[typeddict-item]  # OpenAI's type is optional
            {"role": "user", "content": "And Germany?"},
        ],
    )
    assert second.output_text == "Berlin." and env.primary.chat_calls == calls + 1
    assert upstream_body(env)["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Germany?"},
    ]
    # the referenced items are listed as the items they name
    listed = (await env.client.responses.input_items.list(second.id, order="asc")).data
    assert [i.id for i in listed[:2]] == [asked.id, answer.id]
    assert listed[1].model_dump()["content"][0]["text"] == "Paris."


async def test_references_in_a_tool_round_trip_and_a_chain(env: Env) -> None:
    env.primary.behavior.reply.tool_calls = [ToolCall("get_weather", {"city": "Paris"})]
    env.primary.behavior.reply.text = ""
    first = await env.client.responses.create(
        model="default", input="Weather in Paris?", tools=[WEATHER]
    )
    [call] = first.output
    assert call.type == "function_call" and call.id
    env.primary.behavior.reply.tool_calls = []
    env.primary.behavior.reply.text = "21 degrees."
    # the call by reference, chained: found among the previous response's own items
    second = await env.client.responses.create(
        model="default",
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"t": 21}'},
            ref(call.id),
        ],
        tools=[WEATHER],
    )
    assert second.output_text == "21 degrees."
    tool_call = {
        "id": call.call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": call.arguments},
    }
    assert upstream_body(env)["messages"][:3] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"t": 21}'},
    ]
    # unchained: the call and the output both by reference, found by their ids
    [output_item] = [
        i
        for i in (await env.client.responses.input_items.list(second.id)).data
        if i.type == "function_call_output"
    ]
    await env.client.responses.create(
        model="default",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            ref(call.id),
            ref(output_item.id),
        ],
        tools=[WEATHER],
    )
    assert upstream_body(env)["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"t": 21}'},
    ]


async def test_references_found_by_id_alone(env: Env) -> None:
    """Ids that do not name their response (a client's own), and an output item whose
    response was deleted but that a later response took as input: found through the
    item-id index."""
    first = await env.client.responses.create(model="default", input="Hi")
    [answer] = first.output
    later = await env.client.responses.create(
        model="default",
        input=[
            {"role": "user", "content": "Hi"},
            *_dump(first.output),  # sent back with its id, as the Agents SDK does
            {
                "type": "function_call",
                "id": "my-call-item-7",
                "call_id": "call_7",
                "name": "get_weather",
                "arguments": '{"city": "Oslo"}',
            },
            {"type": "function_call_output", "call_id": "call_7", "output": "-3"},
        ],
        tools=[WEATHER],
    )
    await env.client.responses.delete(first.id)
    third = await env.client.responses.create(
        model="default",
        input=[
            ref(answer.id),
            ref("my-call-item-7"),
            {"type": "function_call_output", "call_id": "call_7", "output": "-3"},
        ],
        tools=[WEATHER],
    )
    assert upstream_body(env)["messages"] == [
        {
            "role": "assistant",
            "content": "Hello there, how can I help?",
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "-3"},
    ]
    # once no stored response holds it (the third listed the items it referenced), unknown
    await env.client.responses.delete(later.id)
    await env.client.responses.delete(third.id)
    with pytest.raises(openai.NotFoundError):
        await env.client.responses.create(model="default", input=[ref("my-call-item-7")])


async def test_a_reference_right_after_its_response_waits_for_its_write(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An id that names no response (a client's own), referenced as soon as the response
    holding it is answered, is found: this process's write of that response is waited for,
    as a previous_response_id's is (read-your-writes), not looked up before it commits."""
    real_save = repository.save

    async def slow_save(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.5)  # the write commits well after the answer
        await real_save(*args, **kwargs)

    monkeypatch.setattr(repository, "save", slow_save)
    call = {
        "type": "function_call",
        "id": "my-call-item-8",
        "call_id": "call_8",
        "name": "get_weather",
        "arguments": '{"city": "Bergen"}',
    }
    await env.client.responses.create(
        model="default",
        input=[
            {"role": "user", "content": "Weather?"},
            call,  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": "call_8", "output": "7"},
        ],
        tools=[WEATHER],
    )
    await env.client.responses.create(
        model="default",
        input=[
            ref("my-call-item-8"),
            {"type": "function_call_output", "call_id": "call_8", "output": "7"},
        ],
        tools=[WEATHER],
    )
    assert upstream_body(env)["messages"][0]["tool_calls"][0]["id"] == "call_8"


async def test_unknown_expired_and_other_organizations_items_are_not_found(env: Env) -> None:
    mine = await env.client.responses.create(
        model="default",
        input=[{"type": "function_call_output", "id": "secret-out", "call_id": "c", "output": "x"}],
    )
    [answer] = mine.output
    stranger = env.sdk(principal(key_id=uuid.uuid4()))
    calls = env.primary.chat_calls
    hexid = uuid.uuid4().hex
    for client, item_id in [
        (stranger, answer.id),  # named by its response: another organization's
        (stranger, "secret-out"),  # through the index: another organization's
        (env.client, f"msg_{hexid}_0"),  # a response that does not exist
        (env.client, "msg_unknown"),
    ]:
        with pytest.raises(openai.NotFoundError) as info:
            await client.responses.create(
                model="default",
                input=[
                    {"role": "user", "content": "Hi"},
                    ref(item_id),
                ],
            )
        err = openai_error(info.value)
        assert (err["code"], err["param"]) == ("item_not_found", "input[1].id")
        assert item_id in err["message"]
    assert env.primary.chat_calls == calls

    await run_sql(
        env,
        "UPDATE llm.responses SET expires_at = now() - interval '1 second' WHERE id = :id",
        id=mine.id,
    )
    for item_id in (answer.id, "secret-out"):
        with pytest.raises(openai.NotFoundError):
            await env.client.responses.create(model="default", input=[ref(item_id)])


async def test_item_id_lookup_uses_its_index(env: Env) -> None:
    """An organization with many stored responses: a reference by id alone is one index
    lookup (the query matches the llm_0004 index's expression), not a scan of its rows."""
    org_id = env.principal.org_id
    assert org_id is not None
    query = repository._item_by_id(org_id, "item_4321")
    sql = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    async with env.app.state.db() as session:
        await session.execute(
            text(
                "INSERT INTO llm.responses (id, org_id, model, response, input_items, history, "
                "expires_at) SELECT 'resp_bulk' || g, :org, 'm', jsonb_build_object('output', "
                "jsonb_build_array(jsonb_build_object('id', 'item_' || g, 'type', 'message'))), "
                "'[]', '[]', now() + interval '1 day' FROM generate_series(1, 5000) g"
            ),
            {"org": org_id},
        )
        await session.execute(text("ANALYZE llm.responses"))
        plan = "\n".join(r[0] for r in await session.execute(text("EXPLAIN " + sql)))
        assert "ix_llm_responses_item_ids" in plan, plan
        assert await session.scalar(query) == {"id": "item_4321", "type": "message"}
        await session.rollback()


# ------------------------------------------------------------------------------ what SDKs send


async def test_agents_sdk_style_history(env: Env) -> None:
    """Output items sent back as they came (ids, statuses, annotations, logprobs), a
    reasoning item with encrypted content (dropped: the chat model reasons anew), a tool
    output as text parts."""
    items: Any = [
        {"role": "user", "content": "Find the weather and cite it."},
        {
            "type": "reasoning",
            "id": "rs_abc",
            "summary": [{"type": "summary_text", "text": "Need the tool."}],
            "encrypted_content": "gAAAAABencrypted==",
        },
        {
            "type": "message",
            "id": "msg_abc",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "Checking.",
                    "annotations": [
                        {
                            "type": "url_citation",
                            "start_index": 0,
                            "end_index": 8,
                            "title": "Weather",
                            "url": "https://example.com",
                        }
                    ],
                    "logprobs": [],
                }
            ],
        },
        {
            "type": "function_call",
            "id": "fc_abc",
            "status": "completed",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": [{"type": "input_text", "text": "21 C"}],
        },
    ]
    resp = await env.client.responses.create(
        model="default",
        input=items,
        tools=[WEATHER],
        include=["reasoning.encrypted_content"],
        reasoning={"effort": "low", "summary": "auto"},
        store=True,
    )
    assert resp.status == "completed"
    body = upstream_body(env)
    assert body["messages"] == [
        {"role": "user", "content": "Find the weather and cite it."},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]
    assert body["reasoning_effort"] == "low" and "include" not in body
    listed = (await env.client.responses.input_items.list(resp.id, order="asc")).data
    assert [i.type for i in listed] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
    ]


@pytest.mark.parametrize(
    ("item", "param", "code", "says"),
    [
        (
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "file_id": "file-abc", "detail": "auto"},
                ],
            },
            "input[0].content[1].image_url",
            "unsupported_content",
            "file_id",
        ),
        (
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_file",
                        "filename": "a.pdf",
                        "file_data": "data:application/pdf;base64,JVBERi0=",
                    }
                ],
            },
            "input[0].content[0].type",
            "unsupported_content",
            "input_file",
        ),
        (
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [{"type": "input_image", "image_url": "https://x/y.png"}],
            },
            "input[0].output[0].type",
            "unsupported_content",
            "function_call_output",
        ),
        (
            {
                "role": "assistant",
                "content": [{"type": "input_image", "image_url": "https://x/y.png"}],
            },
            "input[0].content[0].type",
            "unsupported_content",
            "assistant",
        ),
        (
            {"type": "compaction", "encrypted_content": "x"},
            "input[0].type",
            "unsupported_input",
            "compaction",
        ),
        (
            {"type": "custom_tool_call_output", "call_id": "c", "output": "x"},
            "input[0].type",
            "unsupported_input",
            "custom_tool_call_output",
        ),
        ({"type": "item_reference"}, "input[0].id", "invalid_request", "id"),
    ],
)
async def test_what_cannot_be_served_is_refused_clearly(
    env: Env, item: dict[str, Any], param: str, code: str, says: str
) -> None:
    resp = await env.http.post(
        "/v1/responses",
        json={"model": "default", "input": [item]},
        headers=auth_headers(env.principal),
    )
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param)
    assert says in err["message"]
    assert env.primary.chat_calls == 0
