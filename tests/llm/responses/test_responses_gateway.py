"""``/v1/responses`` through the gateway, in front of the real llm service (real sockets), with
the real ``openai`` SDK and an API key: answers, streams, credentials, the OpenAPI document,
and a client that hangs up mid-stream."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import openai
import pytest
from redis.asyncio import Redis

from libs.usage import USAGE_STREAM
from tests.support.fakes.auth_fake import FakeAuth
from tests.support.stacks.llm import (
    LlmStack,
    Upstream,
)


@dataclass
class Stack:
    path: LlmStack
    upstream: Upstream

    @property
    def gateway(self) -> str:
        return self.path.gateway

    @property
    def auth(self) -> FakeAuth:
        return self.path.auth

    def sdk(self, key: str) -> openai.AsyncOpenAI:
        return self.path.sdk(key)


@pytest.fixture
async def gw(openai_stack: LlmStack, fake_openai: Upstream, redis: Redis) -> Stack:
    fake_openai.reset()
    return Stack(openai_stack, fake_openai)


async def _usage_count(redis: Redis, n: int, within: float = 5) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        count = int(await redis.xlen(USAGE_STREAM))
        if count >= n:
            return count
        await asyncio.sleep(0.05)
    return int(await redis.xlen(USAGE_STREAM))


async def test_answer_and_stream_through_the_gateway(gw: Stack, redis: Redis) -> None:
    key, _ = gw.auth.add_api_key()
    client = gw.sdk(key)
    resp = await client.responses.create(
        model="default", instructions="Be nice.", input="Say hello"
    )
    assert resp.status == "completed" and resp.output_text == "Hello there, how can I help?"

    deltas = []
    async with client.responses.stream(model="default", input="Say hello") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert len(deltas) > 1 and "".join(deltas) == final.output_text
    assert final.usage is not None and final.usage.total_tokens == 19
    # one usage event per call
    assert await _usage_count(redis, 2) == 2
    await asyncio.sleep(0.2)
    assert await redis.xlen(USAGE_STREAM) == 2


async def test_credentials_and_errors_in_openai_shape(gw: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as bad_key:
        await gw.sdk("ask_" + "n" * 40).responses.create(model="default", input="Hi")
    err = bad_key.value.response.json()["error"]
    assert (err["type"], err["code"]) == ("authentication_error", "invalid_api_key")

    key, _ = gw.auth.add_api_key(scopes=["jobs:read"])
    with pytest.raises(openai.PermissionDeniedError):
        await gw.sdk(key).responses.create(model="default", input="Hi")

    key, _ = gw.auth.add_api_key()
    client = gw.sdk(key)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="no-such-model", input="Hi")
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(
            model="default", input="Hi", tools=[{"type": "file_search", "vector_store_ids": []}]
        )
    assert bad.value.response.json()["error"]["param"] == "tools[0].vector_store_ids"
    assert gw.upstream.chat_calls == 0


async def test_stored_responses_through_the_gateway(gw: Stack) -> None:
    key, _ = gw.auth.add_api_key()
    client = gw.sdk(key)
    gw.upstream.behavior.reply.text = "Paris."
    first = await client.responses.create(model="default", input="Capital of France?")
    # chained at once, over real sockets: the first turn is read back, not a 404
    gw.upstream.behavior.reply.text = "Berlin."
    second = await client.responses.create(
        model="default", input="And Germany?", previous_response_id=first.id
    )
    chats = [r for r in gw.upstream.behavior.requests if r["path"].endswith("/chat/completions")]
    assert chats[-1]["json"]["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Germany?"},
    ]
    assert (await client.responses.retrieve(second.id)).output_text == "Berlin."
    items = await client.responses.input_items.list(second.id)
    assert [i.model_dump()["content"][0]["text"] for i in items.data] == ["And Germany?"]

    stranger_key, _ = gw.auth.add_api_key()  # another organization
    with pytest.raises(openai.NotFoundError) as info:
        await gw.sdk(stranger_key).responses.retrieve(second.id)
    assert info.value.response.json()["error"]["code"] == "response_not_found"
    no_scope, _ = gw.auth.add_api_key(scopes=["jobs:read"])
    with pytest.raises(openai.PermissionDeniedError):
        await gw.sdk(no_scope).responses.retrieve(second.id)

    await client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(second.id)


async def test_openapi_document_lists_the_route(gw: Stack) -> None:
    async with httpx.AsyncClient(base_url=gw.gateway) as client:
        doc = (await client.get("/openapi.json")).json()
    assert "post" in doc["paths"]["/v1/responses"]
    assert {"get", "delete"} <= set(doc["paths"]["/v1/responses/{response_id}"])
    assert "get" in doc["paths"]["/v1/responses/{response_id}/input_items"]
    assert "ResponsesRequest" in doc["components"]["schemas"]


async def test_client_hanging_up_cancels_the_upstream(gw: Stack, redis: Redis) -> None:
    # the upstream sends its first chunks, then goes silent for 30 s
    gw.upstream.behavior.stall_after = 600
    key, _ = gw.auth.add_api_key()
    stream = await gw.sdk(key).responses.create(model="default", input="Hi", stream=True)
    async for event in stream:
        if event.type == "response.output_text.delta":
            break
    await stream.close()
    started = time.monotonic()
    # the llm settles the call (one usage event) only once the upstream request is closed
    assert await _usage_count(redis, 1) == 1
    assert time.monotonic() - started < 5, "the upstream was kept open after the client left"


async def test_client_hanging_up_keeps_the_response_so_far(gw: Stack) -> None:
    """The client saw the id (``response.created``), then left: the response is stored as
    ``incomplete`` with what was produced, and a reconnecting agent can chain from it."""
    gw.upstream.behavior.stall_after = 600  # a few chunks, then silence
    key, _ = gw.auth.add_api_key()
    client = gw.sdk(key)
    stream = await client.responses.create(model="default", input="Hi", stream=True)
    response_id, said = "", ""
    async for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.output_text.delta":
            said += event.delta
            break
    await stream.close()
    assert response_id and said

    deadline = time.monotonic() + 5
    while True:  # written once the llm has noticed the client left
        try:
            cut = await client.responses.retrieve(response_id)
            break
        except openai.NotFoundError:
            assert time.monotonic() < deadline, "the cut response was not stored"
            await asyncio.sleep(0.05)
    assert cut.status == "incomplete" and cut.error is None
    assert cut.incomplete_details is not None and cut.incomplete_details.reason is None
    assert cut.usage is None  # the usage event bills what was delivered
    [message] = cut.output
    assert message.type == "message" and message.status == "incomplete"
    # at least what the client read, and no more than the upstream had sent
    assert cut.output_text.startswith(said)
    assert "Hello there, how can I help?".startswith(cut.output_text)

    gw.upstream.behavior.stall_after = None
    await client.responses.create(model="default", input="Go on", previous_response_id=cut.id)
    [*_, last] = [r for r in gw.upstream.behavior.requests if r["path"].endswith("/completions")]
    assert last["json"]["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": cut.output_text},
        {"role": "user", "content": "Go on"},
    ]
