"""Azure OpenAI adapter against a fake Azure OpenAI resource (deployment URLs, api-key)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.llm.providers.azure import API_VERSION, AzureOpenAIProvider
from services.llm.providers.base import ChatRequest, EmbeddingRequest, ProviderError
from tests.support.fakes.openai_fake import (
    AZURE_API_VERSION,
    AZURE_KEY,
    MODEL,
    chunks,
    make_app,
    sse,
)
from tests.support.fakes.vendor_common import Behavior, Reply, ToolCall, assemble, serve

DEPLOYMENTS = {"gpt-4o-mini": "prod-4o-mini", "text-embedding-3-small": "embed small"}


def config(**extra: Any) -> dict[str, Any]:
    return {
        "endpoint": "https://acme.openai.azure.com/",
        "api_key": AZURE_KEY,
        "deployments": DEPLOYMENTS,
        **extra,
    }


@pytest.fixture
def behavior() -> Behavior:
    return Behavior()


@pytest.fixture
async def provider(behavior: Behavior) -> AsyncIterator[AzureOpenAIProvider]:
    p = AzureOpenAIProvider(
        "azure-test", config(transport=httpx.ASGITransport(app=make_app(behavior, azure=True)))
    )
    yield p
    await p.aclose()


def req(model: str = "gpt-4o-mini", **params: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": "Hi"}], params=params)


async def collect(provider: AzureOpenAIProvider, request: ChatRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.stream_chat(request)]


def test_default_api_version_is_the_one_the_fake_speaks() -> None:
    assert API_VERSION == AZURE_API_VERSION


async def test_deployment_url_and_api_key_header(
    provider: AzureOpenAIProvider, behavior: Behavior
) -> None:
    out = await provider.chat(req(temperature=0))
    ChatCompletion.model_validate(out)
    last = behavior.last
    assert last["path"] == "/openai/deployments/prod-4o-mini/chat/completions"
    assert last["query"] == {"api-version": API_VERSION}
    assert last["headers"]["api-key"] == AZURE_KEY
    assert "authorization" not in last["headers"]
    assert last["json"]["temperature"] == 0
    assert out["choices"][0]["message"]["content"] == "Hello there, how can I help?"
    # Azure's content filter annotations reach the caller untouched
    assert out["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False


async def test_unmapped_model_is_its_own_deployment(
    provider: AzureOpenAIProvider, behavior: Behavior
) -> None:
    await provider.chat(req("my-gpt-5"))
    assert behavior.last["path"] == "/openai/deployments/my-gpt-5/chat/completions"


async def test_entra_token_and_api_version_from_config(
    behavior: Behavior, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZ_TOKEN", AZURE_KEY)
    p = AzureOpenAIProvider(
        "a",
        {
            "endpoint": "https://acme.openai.azure.com",
            "azure_ad_token_env": "AZ_TOKEN",
            "api_version": "2025-01-01-preview",
            "transport": httpx.ASGITransport(app=make_app(behavior, azure=True)),
        },
    )
    with pytest.raises(ProviderError) as info:
        await p.chat(req())  # the fake only knows the GA version: Azure says 404
    await p.aclose()
    assert behavior.last["headers"]["authorization"] == f"Bearer {AZURE_KEY}"
    assert "api-key" not in behavior.last["headers"]
    assert behavior.last["query"] == {"api-version": "2025-01-01-preview"}
    assert (info.value.code, info.value.status) == ("upstream_not_found", 404)


async def test_api_key_from_default_env(
    behavior: Behavior, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", AZURE_KEY)
    p = AzureOpenAIProvider(
        "a",
        {
            "endpoint": "https://acme.openai.azure.com",
            "transport": httpx.ASGITransport(app=make_app(behavior, azure=True)),
        },
    )
    await p.chat(req())
    await p.aclose()
    assert behavior.last["headers"]["api-key"] == AZURE_KEY


async def test_wrong_key_is_not_retryable(behavior: Behavior) -> None:
    p = AzureOpenAIProvider(
        "a",
        config(api_key="nope", transport=httpx.ASGITransport(app=make_app(behavior, azure=True))),
    )
    with pytest.raises(ProviderError) as info:
        await p.chat(req())
    await p.aclose()
    assert (info.value.code, info.value.retryable) == ("upstream_auth_failed", False)
    assert "Access denied" in info.value.message


def test_endpoint_is_required() -> None:
    with pytest.raises(ProviderError) as info:
        AzureOpenAIProvider("a", {"api_key": "k"})
    assert info.value.code == "provider_misconfigured"


@pytest.mark.parametrize("split", [(1, 1), (2, 9)])
async def test_stream_with_prompt_filter_chunk_and_tools(
    provider: AzureOpenAIProvider, behavior: Behavior, split: tuple[int, int]
) -> None:
    behavior.split = split
    behavior.reply = Reply(text="Grüße ", tool_calls=[ToolCall("get_weather", {"city": "Köln"})])
    out = await collect(provider, req())
    assert behavior.last["json"]["stream_options"] == {"include_usage": True}
    # the opening prompt-filter chunk has no choices and is passed on as Azure sent it
    assert out[0]["choices"] == [] and "prompt_filter_results" in out[0]
    for chunk in out[1:]:
        ChatCompletionChunk.model_validate(chunk)
    text, calls, finish = assemble(out)
    assert (text, finish) == ("Grüße ", "tool_calls")
    assert json.loads(calls[0]["arguments"]) == {"city": "Köln"}
    assert out[-1]["usage"]["total_tokens"] == 19


@pytest.mark.parametrize(
    ("status", "retry_after", "code", "retryable"),
    [
        (400, None, "upstream_bad_request", False),
        (429, "10", "upstream_rate_limited", True),
        (429, None, "upstream_rate_limited", True),
        (500, None, "upstream_unavailable", True),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_http_errors(
    provider: AzureOpenAIProvider,
    behavior: Behavior,
    status: int,
    retry_after: str | None,
    code: str,
    retryable: bool,
    stream: bool,
) -> None:
    behavior.status, behavior.retry_after = status, retry_after
    behavior.error_message = "Requests to the ChatCompletions_Create Operation have exceeded"
    with pytest.raises(ProviderError) as info:
        if stream:
            await collect(provider, req())
        else:
            await provider.chat(req())
    assert (info.value.code, info.value.retryable) == (code, retryable)
    assert info.value.retry_after == (float(retry_after) if retry_after else None)
    assert "ChatCompletions_Create" in info.value.message


async def test_stream_breaking_midway(behavior: Behavior) -> None:
    payload = sse(chunks(behavior, MODEL, include_usage=True, azure=True), behavior)
    behavior.break_after = len(payload) - 20
    with serve(make_app(behavior, azure=True)) as url:
        p = AzureOpenAIProvider("a", config(endpoint=url))
        with pytest.raises(ProviderError) as info:
            await collect(p, req())
        await p.aclose()
    assert (info.value.code, info.value.retryable) == ("upstream_stream_broken", True)


async def test_timeout(behavior: Behavior) -> None:
    behavior.delay = 3
    with serve(make_app(behavior, azure=True)) as url:
        p = AzureOpenAIProvider("a", config(endpoint=url, timeout=0.2))
        with pytest.raises(ProviderError) as info:
            await p.chat(req())
        await p.aclose()
    assert (info.value.status, info.value.code) == (504, "upstream_timeout")


async def test_embeddings_use_the_embedding_deployment(
    provider: AzureOpenAIProvider, behavior: Behavior
) -> None:
    out = await provider.embed(EmbeddingRequest(model="text-embedding-3-small", input=["a"]))
    assert behavior.last["path"] == "/openai/deployments/embed small/embeddings"
    assert behavior.last["query"] == {"api-version": API_VERSION}
    assert out["data"][0]["embedding"] == [0.1, 0.2]


async def test_models_are_the_configured_deployments(provider: AzureOpenAIProvider) -> None:
    models = await provider.list_models()
    assert [(m.id, m.owned_by) for m in models] == [
        ("gpt-4o-mini", "azure"),
        ("text-embedding-3-small", "azure"),
    ]
