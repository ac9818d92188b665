"""Embeddings and the model list over Azure OpenAI, Gemini and Ollama fakes, and the local model,
through the llm app, called with the real ``openai`` SDK."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.support.fakes import gemini_fake
from tests.support.stacks.llm import Env, Upstream
from tests.support.stacks.vendors import (
    MESSAGES,
    TEXT,
    VENDORS,
    Case,
)

# ------------------------------------------------------------------------------ embeddings


async def test_embeddings(venv: Env, embed_case: Case) -> None:
    vendor = embed_case.vendor
    assert vendor.embed_alias
    embed_case.behavior.embeddings = [[0.25, -0.5, 1.0], [0.125, 0.0, -2.0]]
    resp = await venv.client.embeddings.create(model=vendor.embed_alias, input=["hello", "world"])
    assert resp.object == "list"
    assert [d.index for d in resp.data] == [0, 1]
    assert resp.data[0].embedding == pytest.approx([0.25, -0.5, 1.0])
    assert resp.data[1].embedding == pytest.approx([0.125, 0.0, -2.0])
    floats = await venv.client.embeddings.create(
        model=vendor.embed_alias, input="hello", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx([0.25, -0.5, 1.0])

    sent = embed_case.behavior.requests[0]
    if vendor.provider == "azure":
        assert sent["path"] == "/openai/deployments/emb/embeddings"
        assert sent["json"]["input"] == ["hello", "world"]
        assert "encoding_format" not in sent["json"]  # the SDK's base64 is aistack's business
    elif vendor.provider == "gemini":
        assert sent["path"] == f"/v1beta/models/{vendor.embed_model}:batchEmbedContents"
        assert [r["content"]["parts"][0]["text"] for r in sent["json"]["requests"]] == [
            "hello",
            "world",
        ]
    else:
        assert sent["path"] == "/api/embed"
        assert sent["json"] == {"model": vendor.embed_model, "input": ["hello", "world"]}

    events = await venv.usage_events()
    assert len(events) == 2
    assert {e["kind"] for e in events} == {"embedding"}
    assert {(e["provider"], e["model"]) for e in events} == {(vendor.provider, vendor.embed_model)}
    if vendor.provider == "gemini":
        # Gemini reports no token counts: aistack's own count is billed, never zero
        assert resp.usage.prompt_tokens > 0
    else:
        assert resp.usage.prompt_tokens == 4  # what the fake vendor reports
    assert sorted(e["prompt_tokens"] for e in events) == sorted(
        [resp.usage.prompt_tokens, floats.usage.prompt_tokens]
    )
    assert sum(e["prompt_tokens"] for e in events) == (
        resp.usage.prompt_tokens + floats.usage.prompt_tokens
    )


async def test_gemini_embeds_more_inputs_than_one_batch_takes(
    venv: Env, upstreams: dict[str, Upstream]
) -> None:
    """batchEmbedContents takes at most 100 inputs; a larger request (OpenAI allows 2048) is
    split, and the vectors come back in input order."""
    gemini = upstreams["gemini"]
    gemini.behavior.embeddings = []  # the fake answers a vector derived from each text
    texts = [f"chunk {i} of a long document" for i in range(gemini_fake.MAX_BATCH * 2 + 30)]
    resp = await venv.client.embeddings.create(model="gem-embed", input=texts)
    assert [d.index for d in resp.data] == list(range(len(texts)))
    assert [d.embedding for d in resp.data] == [gemini_fake.derived_embedding(t) for t in texts]
    sizes = sorted(len(r["json"]["requests"]) for r in gemini.behavior.requests)
    assert sizes == [30, gemini_fake.MAX_BATCH, gemini_fake.MAX_BATCH]
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["prompt_tokens"] == resp.usage.prompt_tokens > 0


async def test_embedding_dimensions_are_forwarded(venv: Env, embed_case: Case) -> None:
    vendor = embed_case.vendor
    assert vendor.embed_alias
    embed_case.behavior.embeddings = [[0.5, 0.5]]
    await venv.client.embeddings.create(model=vendor.embed_alias, input="x", dimensions=2)
    body = embed_case.behavior.last["json"]
    if vendor.provider == "gemini":
        assert body["requests"][0]["outputDimensionality"] == 2
    else:
        assert body["dimensions"] == 2


async def test_vendor_error_on_embeddings(venv: Env, embed_case: Case) -> None:
    vendor = embed_case.vendor
    assert vendor.embed_alias
    embed_case.behavior.status = 429
    embed_case.behavior.retry_after = "30"
    with pytest.raises(openai.RateLimitError):
        await venv.client.embeddings.create(model=vendor.embed_alias, input="x")
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_embeddings_on_a_vendor_without_them_is_a_400(venv: Env) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await venv.client.embeddings.create(model="claude-embed", input="x")
    assert "does not support embeddings" in exc.value.message


# ------------------------------------------------------------------------------ models


async def test_model_list_names_every_vendor_alias(venv: Env) -> None:
    models = {m.id: m async for m in venv.client.models.list()}
    expected = {v.alias for v in VENDORS.values()} | {
        v.embed_alias for v in VENDORS.values() if v.embed_alias
    }
    assert expected <= set(models)
    for vendor in VENDORS.values():
        chat = models[vendor.alias]
        assert chat.owned_by == "aistack"
        assert chat.model_extra is not None
        assert chat.model_extra["type"] == "chat"
        assert chat.model_extra["targets"] == [f"{vendor.provider}/{vendor.model}"]
        assert chat.model_extra["context_window"] == 128000
        if vendor.embed_alias:
            embed = models[vendor.embed_alias]
            assert embed.model_extra is not None and embed.model_extra["type"] == "embedding"
            assert embed.model_extra["targets"] == [f"{vendor.provider}/{vendor.embed_model}"]
    one = await venv.client.models.retrieve("claude")
    assert one.id == "claude"


async def test_provider_model_addressed_directly(venv: Env, case: Case) -> None:
    """``<provider>/<model>`` reaches the vendor without an alias (price 0)."""
    resp = await venv.client.chat.completions.create(
        model=f"{case.vendor.provider}/{case.vendor.model}", messages=MESSAGES
    )
    assert resp.choices[0].message.content == TEXT
    events = await venv.usage_events()
    assert (events[0]["provider"], events[0]["model"]) == (case.vendor.provider, case.vendor.model)
    assert Decimal(events[0]["cost_usd"]) == 0


# ------------------------------------------------------------------------------ local


@pytest.mark.slow
async def test_local_model_through_the_api(venv: Env) -> None:
    stream = await venv.client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        # loading the model on first use outlasts the fixture's 3 s idle timeout
        extra_headers={"x-aistack-timeout": "120"},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["length"], ["stop"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 4
    events = await venv.usage_events()
    assert len(events) == 1
    ev = events[0]
    assert (ev["provider"], ev["model"]) == ("local", "smollm2-135m-instruct")
    assert (ev["prompt_tokens"], ev["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


async def test_azure_time_to_first_token_waits_for_a_choice(
    venv: Env, upstreams: dict[str, Upstream]
) -> None:
    # Azure opens its stream at once with a content-filter chunk that has no choices; the time
    # to first token is when the first choice arrives, not that
    upstreams["azure"].behavior.pause_after_first = 0.3
    stream = await venv.client.chat.completions.create(model="az", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    events = await venv.usage_events()
    assert len(events) == 1
    assert events[0]["ttft_ms"] >= 300, events[0]["ttft_ms"]
