"""``POST /v1/completions`` (OpenAI's legacy text completions) through the real ``openai`` SDK:
answers, streams, lists of prompts, n, echo, refusals, idempotency and usage events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from libs.testing import Infra, auth_headers
from services.llm.app import build_app
from services.llm.legacy.translate import add_usage
from tests.support.fakes import openai_fake
from tests.support.fakes.vendor_common import Behavior, serve
from tests.support.stacks.llm import KEY_ENV, Env, Upstream, open_env, routing, settings_for

REPLY = "Hello there, how can I help?"


def chat_id(completion_id: str) -> str:
    """The request id of the chat call behind a completion (its usage event's)."""
    assert completion_id.startswith("cmpl-")
    return "chatcmpl-" + completion_id.removeprefix("cmpl-")


async def test_plain_completion(env: Env) -> None:
    resp = await env.client.completions.create(model="default", prompt="Say hello")
    assert isinstance(resp, Completion) and resp.object == "text_completion"
    assert [(c.index, c.text, c.finish_reason, c.logprobs) for c in resp.choices] == [
        (0, REPLY, "stop", None)
    ]
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (12, 7)
    assert resp.usage.total_tokens == 19
    assert resp.id.startswith("cmpl-") and resp.model == "gpt-4o-mini"
    assert resp.system_fingerprint == "fp_fake01"
    # the prompt went as one user message, with OpenAI's default max_tokens of 16
    sent = env.primary.behavior.last["json"]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == [{"role": "user", "content": "Say hello"}]
    assert sent["max_tokens"] == 16

    events = await env.usage_events()
    assert len(events) == 1
    ev = events[0]
    assert ev["request_id"] == chat_id(resp.id) and ev["kind"] == "completion"
    assert (ev["prompt_tokens"], ev["completion_tokens"], ev["status"]) == (12, 7, "ok")
    assert (ev["provider"], ev["model"]) == ("primary", "gpt-4o-mini")


async def test_parameters_reach_the_provider(env: Env) -> None:
    env.primary.behavior.reply.stop = "length"
    resp = await env.client.completions.create(
        model="default",
        prompt="Count",
        max_tokens=5,
        temperature=0.4,
        top_p=0.9,
        stop=["\n", "END"],
        seed=7,
        user="u-1",
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"50256": -100},
        best_of=1,
        echo=False,
    )
    assert resp.choices[0].finish_reason == "length"
    sent = env.primary.behavior.last["json"]
    assert {k: v for k, v in sent.items() if k not in ("model", "messages")} == {
        "max_tokens": 5,
        "temperature": 0.4,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "seed": 7,
        "user": "u-1",
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100},
    }
    # max_tokens null: no limit sent (OpenAI's meaning), not the default of 16
    await env.client.completions.create(model="default", prompt="x", max_tokens=None)
    assert "max_tokens" not in env.primary.behavior.last["json"]


async def test_content_filter_finish_reason(env: Env) -> None:
    env.primary.behavior.reply.stop = "content_filter"
    resp = await env.client.completions.create(model="default", prompt="x")
    assert resp.choices[0].finish_reason == "content_filter"


async def test_stream_with_final_usage_chunk(env: Env) -> None:
    stream = await env.client.completions.create(
        model="default",
        prompt="Say hello",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert all(isinstance(c, Completion) and c.object == "text_completion" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    with_choices = [c for c in chunks if c.choices]
    assert len(with_choices) > 2
    assert "".join(c.choices[0].text for c in with_choices) == REPLY
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (12, 7)
    assert all(c.usage is None for c in chunks[:-1])

    events = await env.usage_events()
    assert len(events) == 1
    assert events[0]["request_id"] == chat_id(last.id) and events[0]["status"] == "ok"
    assert events[0]["ttft_ms"] is not None


async def test_stream_wire_format(env: Env) -> None:
    async with env.http.stream(
        "POST",
        "/v1/completions",
        json={"model": "default", "prompt": "Say hello", "stream": True},
        headers=auth_headers(env.principal),
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = (await resp.aread()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    for p in payloads:
        # OpenAI sends finish_reason null until a choice's last chunk; the SDK's type (shared
        # with the non-streamed object) does not model that null, and its streams do not validate
        choices = [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in p["choices"]]
        Completion.model_validate({**p, "choices": choices})
    assert [p["choices"][0]["finish_reason"] for p in payloads][-2:] == [None, "stop"]
    # no usage asked for: no usage field and no usage chunk; no empty role chunk either
    assert all("usage" not in p for p in payloads)
    assert all(p["choices"][0]["text"] or p["choices"][0]["finish_reason"] for p in payloads)
    assert set(payloads[0]) == {"id", "object", "created", "model", "choices", "system_fingerprint"}


async def test_stream_breaking_midway_reports_in_band(env: Env) -> None:
    env.primary.behavior.break_after = 700  # a few chunks, then the connection drops
    stream = await env.client.completions.create(model="default", prompt="x", stream=True)
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert got, "text reached the client before the break"
    assert "Upstream stream failed" in exc.value.message
    events = await env.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_a_list_of_prompts_is_one_call_each(env: Env) -> None:
    prompts = ["one", "two", "three"]
    resp = await env.client.completions.create(model="default", prompt=prompts, echo=True)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    # echo: each choice starts with its own prompt, so the indexes are the prompts' order
    assert [c.text for c in resp.choices] == [p + REPLY for p in prompts]
    sent = sorted(
        r["json"]["messages"][0]["content"]
        for r in env.primary.behavior.requests
        if r["path"].endswith("/chat/completions")
    )
    assert sent == sorted(prompts)
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (36, 21)
    assert resp.usage.total_tokens == 57
    # one usage event per chat call (each its own upstream request), the first one's id shown
    events = await env.usage_events()
    assert len(events) == 3 and chat_id(resp.id) in {e["request_id"] for e in events}
    assert sum(e["prompt_tokens"] for e in events) == 36


async def test_a_list_of_prompts_streamed(env: Env) -> None:
    prompts = ["one", "two"]
    stream = await env.client.completions.create(
        model="default",
        prompt=prompts,
        echo=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert len({c.id for c in chunks}) == 1
    texts: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            finishes[choice.index] = choice.finish_reason
    assert texts == {0: "one" + REPLY, 1: "two" + REPLY}
    assert finishes == {0: "stop", 1: "stop"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 38
    events = await env.usage_events()
    assert len(events) == 2 and {e["status"] for e in events} == {"ok"}


async def test_echo_streamed(env: Env) -> None:
    stream = await env.client.completions.create(
        model="default", prompt="Q: hi\nA:", echo=True, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].text.startswith("Q: hi\nA:")
    assert "".join(c.choices[0].text for c in chunks) == "Q: hi\nA:" + REPLY


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2], [3]]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["x"] * 129}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": "x", "suffix": "end"}, "suffix"),
        ({"prompt": "x", "logprobs": 1}, "logprobs"),
        ({"prompt": "x", "logprobs": 0}, "logprobs"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "best_of": 1, "n": 2}, "best_of"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "n": 17}, "n"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "extra_body": {"messages": []}}, "messages"),
        ({"prompt": "x", "extra_body": {"top_k": 5}}, "top_k"),
    ],
)
async def test_unsupported_or_invalid_is_a_400_naming_the_param(
    env: Env, kwargs: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await env.client.completions.create(model="default", **kwargs)
    error = exc.value.response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]
    assert env.primary.chat_calls == 0
    assert await env.usage_events() == []


async def test_token_ids_and_suffix_messages(env: Env) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await env.client.completions.create(model="default", prompt=[1, 2, 3])
    assert "Token-id prompts are not supported" in exc.value.message
    assert exc.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as exc:
        await env.client.completions.create(model="default", prompt="x", extra_body={"foo": 1})
    assert "Unrecognized request argument supplied: foo" in exc.value.message


async def test_unknown_model_is_not_found(env: Env) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        await env.client.completions.create(model="no-such-model", prompt="x")
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:  # an embedding model
        await env.client.completions.create(model="embed", prompt="x")
    assert bad.value.code == "model_not_supported"
    assert env.primary.chat_calls == 0


async def test_needs_the_llm_scope(env: Env) -> None:
    from libs.testing import principal

    client = env.sdk(principal(key_id=uuid.uuid4(), scopes=["jobs:read"]))
    with pytest.raises(openai.PermissionDeniedError):
        await client.completions.create(model="default", prompt="x")


async def test_idempotency_key_replays(env: Env) -> None:
    headers = {"Idempotency-Key": "cmpl-42"}
    first = await env.client.completions.create(
        model="default", prompt="Say hello", extra_headers=headers
    )
    await env.service.drain()
    again = await env.client.completions.with_raw_response.create(
        model="default", prompt="Say hello", extra_headers=headers
    )
    assert again.headers["x-aistack-idempotent-replay"] == "true"
    assert again.parse().id == first.id and again.parse().choices == first.choices
    stream = await env.client.completions.create(
        model="default", prompt="Say hello", stream=True, extra_headers=headers
    )
    chunks = [c async for c in stream]
    assert {c.id for c in chunks} == {first.id}
    assert "".join(c.choices[0].text for c in chunks if c.choices) == REPLY
    assert env.primary.chat_calls == 1
    assert len(await env.usage_events()) == 1

    # a list: each prompt claimed under its own key, so a retry runs nothing again
    listed = await env.client.completions.create(
        model="default", prompt=["a", "b"], extra_headers={"Idempotency-Key": "batch-1"}
    )
    await env.service.drain()
    retried = await env.client.completions.create(
        model="default", prompt=["a", "b"], extra_headers={"Idempotency-Key": "batch-1"}
    )
    assert retried.id == listed.id and retried.choices == listed.choices
    assert env.primary.chat_calls == 3
    with pytest.raises(openai.BadRequestError) as long_key:
        await env.client.completions.create(
            model="default", prompt=["a", "b"], extra_headers={"Idempotency-Key": "k" * 254}
        )
    assert long_key.value.code == "invalid_idempotency_key"
    assert env.primary.chat_calls == 3


async def test_response_cache_serves_deterministic_requests(env: Env) -> None:
    first = await env.client.completions.with_raw_response.create(
        model="default", prompt="Say hello", temperature=0
    )
    assert first.headers["x-aistack-cache"] == "miss"
    await env.service.drain()
    second = await env.client.completions.with_raw_response.create(
        model="default", prompt="Say hello", temperature=0
    )
    assert second.headers["x-aistack-cache"] == "hit"
    assert second.parse().choices[0].text == REPLY
    assert env.primary.chat_calls == 1


async def test_openapi_document_shows_the_route(env: Env) -> None:
    doc = (await env.http.get("/openapi.json")).json()
    op = doc["paths"]["/v1/completions"]["post"]
    assert "legacy Completions API" in op["summary"]
    assert set(op["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}


def test_add_usage_sums_nested_counts() -> None:
    a = {"prompt_tokens": 1, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 1}}
    b = {"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2}}
    assert add_usage(add_usage(None, a), b) == {
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 3},
    }


# ------------------------------------------------------------------ n > 1


def _n_fake(behavior: Behavior) -> Starlette:
    """An OpenAI chat endpoint that honours ``n`` (choice ``i`` answers ``answer <i>``), its
    payloads validated with the SDK's types (the shared fake always answers one choice). The
    prompt ``refuse`` is refused, after a while, with OpenAI's 400 body."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        behavior.requests.append({"path": request.url.path, "json": body})
        if body["messages"][0]["content"] == "refuse":
            await asyncio.sleep(0.3)
            return JSONResponse(openai_fake.error_body(400, "Invalid prompt."), status_code=400)
        n, model = int(body.get("n") or 1), body["model"]
        usage = {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n}
        base = {"id": "chatcmpl-n", "created": openai_fake.CREATED, "model": model}
        if not body.get("stream"):
            out = {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": f"answer {i}"},
                        "logprobs": None,
                        "finish_reason": "stop" if i == 0 else "length",
                    }
                    for i in range(n)
                ],
                "usage": usage,
            }
            ChatCompletion.model_validate(out)
            return JSONResponse(out)
        chunks = []
        for i in range(n):
            for delta, finish in (
                ({"role": "assistant", "content": ""}, None),
                ({"content": "answer "}, None),
                ({"content": str(i)}, None),
                ({}, "stop" if i == 0 else "length"),
            ):
                chunks.append(
                    {
                        **base,
                        "object": "chat.completion.chunk",
                        "choices": [
                            {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
                        ],
                    }
                )
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        for c in chunks:
            ChatCompletionChunk.model_validate(c)

        async def events() -> AsyncIterator[bytes]:
            for c in chunks:
                yield f"data: {json.dumps(c)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def n_server() -> Iterator[Upstream]:
    behavior = Behavior()
    with serve(_n_fake(behavior)) as url:
        yield Upstream(url, behavior)


@pytest.fixture
async def n_env(
    infra: Infra,
    redis: Redis,
    tmp_path: Path,
    primary: Upstream,
    backup: Upstream,
    n_server: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Env]:
    n_server.reset()
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    config = routing(primary, backup)
    config["providers"]["multi"] = {
        "kind": "openai",
        "base_url": f"{n_server.url}/v1",
        "api_key_env": KEY_ENV,
        "timeout": 5,
    }
    config["models"]["multi"] = {"targets": [{"provider": "multi", "model": "gpt-n"}]}
    app = build_app(settings_for(tmp_path, config))
    async with open_env(app, primary, backup, redis) as env:
        yield env


async def test_n_choices_per_prompt_keep_openai_indexes(n_env: Env, n_server: Upstream) -> None:
    resp = await n_env.client.completions.create(model="multi", prompt=["p0", "p1"], n=2, best_of=2)
    # prompt i's choice j is index i * n + j
    assert [(c.index, c.text, c.finish_reason) for c in resp.choices] == [
        (0, "answer 0", "stop"),
        (1, "answer 1", "length"),
        (2, "answer 0", "stop"),
        (3, "answer 1", "length"),
    ]
    assert resp.usage is not None and resp.usage.total_tokens == 22
    assert [r["json"]["n"] for r in n_server.behavior.requests] == [2, 2]

    stream = await n_env.client.completions.create(
        model="multi",
        prompt=["p0", "p1"],
        n=2,
        echo=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    last = None
    async for chunk in stream:
        last = chunk
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            finishes[choice.index] = choice.finish_reason or finishes.get(choice.index)
    assert texts == {0: "p0answer 0", 1: "p0answer 1", 2: "p1answer 0", 3: "p1answer 1"}
    assert finishes == {0: "stop", 1: "length", 2: "stop", 3: "length"}
    assert last is not None and last.usage is not None and last.usage.total_tokens == 22
    assert len(await n_env.usage_events()) == 4


async def test_one_prompt_failing_fails_the_request_and_closes_the_others(
    n_env: Env, n_server: Upstream
) -> None:
    # not streamed: the request fails with that call's error; the answered call is billed
    with pytest.raises(openai.BadRequestError):
        await n_env.client.completions.create(model="multi", prompt=["p0", "refuse"])
    events = await n_env.usage_events()
    assert sorted(e["status"] for e in events) == ["error", "ok"]
    seen = {e["job_id"] for e in events}

    # streamed: the stream already open for p0 is closed, billed as cut short
    with pytest.raises(openai.BadRequestError):
        await n_env.client.completions.create(model="multi", prompt=["p0", "refuse"], stream=True)
    events = [e for e in await n_env.usage_events() if e["job_id"] not in seen]
    assert sorted(e["status"] for e in events) == ["cancelled", "error"]
    cut = next(e for e in events if e["status"] == "cancelled")
    assert cut["prompt_tokens"] > 0
