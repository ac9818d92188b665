"""Prompts and conversations in /v1/chat/completions, through the real openai SDK."""

# ruff: noqa: RUF001  (text in other scripts, punctuation included)

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from libs import tokens
from libs.identity import Principal
from libs.testing import Infra, auth_headers, principal
from services.llm.tokens import tokenizer
from services.llm.tokens.tokenizer import TokenPlan
from tests.support.stacks.llm import Env

GPT = TokenPlan("o200k_base")

PROMPT = {
    "name": "support",
    "version": {
        "messages": [
            {"role": "system", "content": "You are {{ persona }}."},
            {"role": "user", "content": "Context: {{ context }}"},
        ],
        "model": "default",
        "params": {"temperature": 0.3, "max_tokens": 50},
        "labels": ["production"],
    },
}


async def post(env: Env, p: Principal, path: str, body: Any) -> dict[str, Any]:
    resp = await env.http.post(path, json=body, headers=auth_headers(p))
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def get(env: Env, p: Principal, path: str) -> dict[str, Any]:
    resp = await env.http.get(path, headers=auth_headers(p))
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def prompt_uses(infra: Infra, request_id: str) -> list[dict[str, Any]]:
    engine = create_async_engine(infra.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT * FROM llm.prompt_uses WHERE request_id = :r"), {"r": request_id}
            )
            return [dict(r._mapping) for r in rows]
    finally:
        await engine.dispose()


async def test_chat_with_a_prompt(env: Env, infra: Infra) -> None:
    prompt = await post(env, env.principal, "/v1/prompts", PROMPT)
    raw = await env.client.chat.completions.with_raw_response.create(
        model="fallback",  # the version names "default": the version's model wins
        messages=[{"role": "user", "content": "Where is my order?"}],
        temperature=0.9,  # the request's own parameters win over the version's
        extra_body={
            "prompt": {"name": "support", "variables": {"persona": "kind", "context": "order 7"}}
        },
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "Hello there, how can I help?"
    sent = env.primary.behavior.last["json"]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Context: order 7"},
        {"role": "user", "content": "Where is my order?"},
    ]
    assert sent["temperature"] == 0.9 and sent["max_tokens"] == 50
    assert "prompt" not in sent and "conversation_id" not in sent

    versions = await get(env, env.principal, f"/v1/prompts/{prompt['id']}/versions")
    version_id = versions["data"][0]["id"]
    assert raw.headers["x-aistack-prompt-version"] == version_id
    # the usage event and the prompt use share the request id
    events = await env.usage_events()
    assert len(events) == 1 and events[0]["request_id"] == resp.id
    uses = await prompt_uses(infra, resp.id)
    assert [(str(u["version_id"]), u["label"]) for u in uses] == [(version_id, "production")]


async def test_prompt_errors_use_openai_shape(env: Env) -> None:
    await post(env, env.principal, "/v1/prompts", PROMPT)
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        await env.client.chat.completions.create(
            model="default",
            messages=[],
            extra_body={"prompt": {"name": "support", "variables": {"persona": "x"}}},
        )
    assert exc.value.code == "missing_variable" and "context" in exc.value.message
    # another organization's prompt does not exist for this caller
    stranger = env.sdk(principal())
    with pytest.raises(openai.NotFoundError) as nf:
        await stranger.chat.completions.create(
            model="default", messages=[], extra_body={"prompt": {"name": "support"}}
        )
    assert nf.value.code == "prompt_not_found"
    with pytest.raises(openai.BadRequestError):
        await env.client.chat.completions.create(
            model="default", messages=[], extra_body={"prompt": {"label": "x"}}
        )
    with pytest.raises(openai.BadRequestError):
        await env.client.chat.completions.create(model="default", messages=[])
    assert env.primary.chat_calls == 0
    assert await env.usage_events() == []


async def test_conversation_history_and_storage(env: Env) -> None:
    conv = await post(
        env,
        env.principal,
        "/v1/conversations",
        {"title": "c", "messages": [{"role": "system", "content": "Be brief."}]},
    )
    cid = conv["id"]
    first = await env.client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"conversation_id": cid},
    )
    assert env.primary.behavior.last["json"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    # the next request gets the stored history, streamed this time
    env.primary.behavior.reply.text = "Second answer"
    stream = await env.client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "And?"}],
        stream=True,
        extra_body={"conversation_id": cid},
    )
    text_parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(text_parts) == "Second answer"
    assert env.primary.behavior.last["json"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there, how can I help?"},
        {"role": "user", "content": "And?"},
    ]
    got = await get(env, env.principal, f"/v1/conversations/{cid}")
    roles = [(m["role"], m["content"]) for m in got["messages"]]
    assert roles == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello there, how can I help?"),
        ("user", "And?"),
        ("assistant", "Second answer"),
    ]
    assert got["messages"][2]["request_id"] == first.id
    assert got["messages"][2]["usage"]["prompt_tokens"] == 12

    # failures store nothing: an upstream error, and a stream that breaks midway
    env.primary.behavior.status = 500
    with pytest.raises(openai.APIError):
        await env.client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "lost"}],
            extra_body={"conversation_id": cid},
        )
    env.primary.behavior.status = None
    env.primary.behavior.break_after = 400
    env.primary.behavior.reply.text = "Hello there, how can I help?"
    broken = await env.client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "lost too"}],
        stream=True,
        extra_body={"conversation_id": cid},
    )
    got_chunks = []
    with pytest.raises(openai.APIError):
        async for chunk in broken:
            got_chunks.append(chunk)
    assert got_chunks, "the stream broke midway, after the first chunks"
    got = await get(env, env.principal, f"/v1/conversations/{cid}")
    assert got["message_count"] == 5

    # someone else's conversation, even in the same organization, is not found
    colleague = principal(org_id=env.principal.org_id)
    with pytest.raises(openai.NotFoundError) as nf:
        await env.sdk(colleague).chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "peek"}],
            extra_body={"conversation_id": cid},
        )
    assert nf.value.code == "conversation_not_found"
    with pytest.raises(openai.NotFoundError):
        await env.client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"conversation_id": str(uuid.uuid4())},
        )


async def test_prompt_and_conversation_together(env: Env, infra: Infra) -> None:
    await post(env, env.principal, "/v1/prompts", PROMPT)
    conv = await post(env, env.principal, "/v1/conversations", {"title": "t"})
    ref = {"name": "support", "variables": {"persona": "terse", "context": "none"}}
    for question in ("one", "two"):
        await env.client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": question}],
            extra_body={"prompt": ref, "conversation_id": conv["id"]},
        )
    # the rendered prompt is a prefix, then the history, then the question
    assert env.primary.behavior.last["json"]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Context: none"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "Hello there, how can I help?"},
        {"role": "user", "content": "two"},
    ]
    got = await get(env, env.principal, f"/v1/conversations/{conv['id']}")
    assert [m["content"] for m in got["messages"]] == [
        "one",
        "Hello there, how can I help?",
        "two",
        "Hello there, how can I help?",
    ]
    versions = await get(env, env.principal, "/v1/prompts/support/versions")
    assert {m["prompt_version_id"] for m in got["messages"]} == {versions["data"][0]["id"]}

    # with no messages of its own, the prompt's user turn is the turn stored
    solo = await post(env, env.principal, "/v1/conversations", {"title": "solo"})
    for _ in range(2):
        await env.client.chat.completions.create(
            model="default", messages=[], extra_body={"prompt": ref, "conversation_id": solo["id"]}
        )
    assert env.primary.behavior.last["json"]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Context: none"},
        {"role": "assistant", "content": "Hello there, how can I help?"},
        {"role": "user", "content": "Context: none"},
    ]
    got = await get(env, env.principal, f"/v1/conversations/{solo['id']}")
    assert [m["role"] for m in got["messages"]] == ["user", "assistant", "user", "assistant"]


async def test_idempotent_retry_stores_once(env: Env) -> None:
    conv = await post(env, env.principal, "/v1/conversations", {"title": "i"})
    for _ in range(2):
        raw = await env.client.chat.completions.with_raw_response.create(
            model="default",
            messages=[{"role": "user", "content": "once"}],
            extra_body={"conversation_id": conv["id"]},
            extra_headers={"Idempotency-Key": f"k-{conv['id']}"},
        )
    # the retry replays the first answer (its history had grown meanwhile: same key, same body)
    assert raw.headers.get("x-aistack-idempotent-replay") == "true"
    assert env.primary.chat_calls == 1
    got = await get(env, env.principal, f"/v1/conversations/{conv['id']}")
    assert got["message_count"] == 2


async def test_history_is_trimmed_to_the_context_window(env: Env) -> None:
    long = "word " * 760  # 760 tokens per message (" word" is one token)
    turns = []
    for i in range(200):  # about 152k tokens, beyond the alias's 128k window
        turns += [
            {"role": "user", "content": f"q{i} {long}"},
            {"role": "assistant", "content": f"a{i}"},
        ]
    conv = await post(
        env,
        env.principal,
        "/v1/conversations",
        {"messages": [{"role": "system", "content": "S"}, *turns]},
    )
    await env.client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "latest"}],
        max_tokens=1000,
        extra_body={"conversation_id": conv["id"]},
    )
    sent = env.primary.behavior.last["json"]["messages"]
    assert sent[0] == {"role": "system", "content": "S"}
    assert sent[-1] == {"role": "user", "content": "latest"}
    assert sent[-3:-1] == turns[-2:]  # the newest turns made it
    assert sent[1]["role"] == "user"  # whole turns
    assert 2 < len(sent) < len(turns)
    # "default" routes to gpt-4o-mini: counted exactly in o200k_base
    enc = tokens.get_encoding("o200k_base")
    assert tokenizer.count_messages(GPT, enc, sent) <= 128_000 - 1000
    older = turns[len(turns) - (len(sent) - 2) - 2 :][:2]
    assert tokenizer.count_messages(GPT, enc, [*sent, *older]) > 128_000 - 1000


async def test_a_chinese_history_is_trimmed_by_its_real_token_count(env: Env) -> None:
    question = (
        "请根据我们之前讨论的内容，总结一下这个项目目前的进展、主要风险以及下一步的工作安排。"
    )
    long = question * 30  # 1320 characters: ~870 tokens, ~4 KB
    turns: list[dict[str, Any]] = []
    for i in range(200):  # ~175k tokens (chars / 4 would call it 66k and send it all)
        turns += [
            {"role": "user", "content": f"第{i}轮：{long}"},
            {"role": "assistant", "content": f"好的，第{i}轮。"},
        ]
    conv = await post(
        env,
        env.principal,
        "/v1/conversations",
        {"messages": [{"role": "system", "content": "简洁"}]},
    )
    for start in range(0, len(turns), 100):  # request bodies stay under 1 MiB
        resp = await env.http.post(
            f"/v1/conversations/{conv['id']}/messages",
            json={"messages": turns[start : start + 100]},
            headers=auth_headers(env.principal),
        )
        assert resp.status_code in (200, 201), resp.text
    await env.client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "接下来呢？"}],
        max_tokens=1000,
        extra_body={"conversation_id": conv["id"]},
    )
    sent = env.primary.behavior.last["json"]["messages"]
    assert sent[0] == {"role": "system", "content": "简洁"}
    assert sent[-3:] == [*turns[-2:], {"role": "user", "content": "接下来呢？"}]
    assert sent[1]["role"] == "user"
    kept = len(sent) - 2
    assert 0 < kept < len(turns)
    enc = tokens.get_encoding("o200k_base")
    assert tokenizer.count_messages(GPT, enc, sent) <= 128_000 - 1000
    older = turns[len(turns) - kept - 2 : len(turns) - kept]
    assert older[0]["role"] == "user"
    assert tokenizer.count_messages(GPT, enc, [*sent, *older]) > 128_000 - 1000


async def test_a_broken_tokenizer_fails_the_request_instead_of_overflowing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await post(
        env,
        env.principal,
        "/v1/conversations",
        {"messages": [{"role": "user", "content": "word " * 30_000}]},  # 150 KB > 128k window
    )
    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(
        tokens, "_failed", {"o200k_base": tokens.TokenizerDataError("corrupt rank file")}
    )
    with pytest.raises(openai.InternalServerError) as caught:
        await env.client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"conversation_id": conv["id"]},
        )
    assert caught.value.status_code == 500
    assert env.primary.chat_calls == 0  # nothing unchecked went upstream
    # a history that fits by its size needs no tokenizer and still works
    small = await post(env, env.principal, "/v1/conversations", {"title": "small"})
    await env.client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"conversation_id": small["id"]},
    )
    assert env.primary.chat_calls == 1
