"""Embeddings and the model list through the real openai SDK."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.support.stacks.llm import Env


async def test_embeddings_base64_by_default_and_float(env: Env) -> None:
    # the SDK asks for base64 unless told otherwise, and decodes it
    resp = await env.client.embeddings.create(model="embed", input=["hello", "world"])
    assert [d.index for d in resp.data] == [0, 1]
    assert resp.data[0].embedding == pytest.approx([0.1, 0.2])
    assert resp.data[1].embedding == pytest.approx([0.3, 0.4])
    assert resp.usage.prompt_tokens == 4
    assert env.primary.behavior.last["json"]["model"] == "text-embedding-3-small"

    floats = await env.client.embeddings.create(
        model="embed", input="hello", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx([0.1, 0.2])
    # aistack's input_type is for models that embed queries and passages apart: never sent on
    await env.client.embeddings.create(
        model="embed", input="hello", extra_body={"input_type": "passage"}
    )
    assert "input_type" not in env.primary.behavior.last["json"]
    with pytest.raises(openai.BadRequestError):
        await env.client.embeddings.create(
            model="embed", input="hello", extra_body={"input_type": "document"}
        )

    events = await env.usage_events()
    assert len(events) == 3
    assert {e["kind"] for e in events} == {"embedding"}
    assert all(e["job_id"].startswith("usage:embedding:embd-") for e in events)
    assert Decimal(events[0]["cost_usd"]) == Decimal("0.00000008")  # 4 * 0.02 / 1M


async def test_embedding_model_refuses_chat_and_vice_versa(env: Env) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await env.client.chat.completions.create(
            model="embed", messages=[{"role": "user", "content": "x"}]
        )
    assert exc.value.code == "model_not_supported"
    with pytest.raises(openai.BadRequestError):
        await env.client.embeddings.create(model="default", input="x")
    assert await env.usage_events() == []


async def test_model_list_and_get(env: Env) -> None:
    models = [m async for m in env.client.models.list()]
    assert {m.id for m in models} == {"default", "fallback", "embed"}
    assert all(m.object == "model" and m.owned_by == "aistack" for m in models)
    one = await env.client.models.retrieve("fallback")
    assert one.id == "fallback"
    assert one.model_extra and one.model_extra["targets"] == [
        "primary/gpt-4o-mini",
        "backup/gpt-4o",
    ]
    with pytest.raises(openai.NotFoundError) as exc:
        await env.client.models.retrieve("nope")
    assert exc.value.code == "model_not_found"
