"""The llm the batch tests send to: the built-in local model, or the fake OpenAI upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from libs.testing import Infra
from tests.support.fakes import openai_fake
from tests.support.stacks.llm import KEY_ENV, Upstream, fake_openai_upstream
from tests.support.stacks.rag import serve_llm


@pytest.fixture(scope="session")
async def local_llm(infra: Infra) -> AsyncIterator[str]:
    """The real llm answering with its built-in local CPU models."""
    server = await serve_llm()
    yield server.url
    await server.stop()


@pytest.fixture(scope="session")
async def fake_llm(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, Upstream]]:
    """The real llm with chat on the fake OpenAI upstream (steered per test)."""
    with fake_openai_upstream() as upstream, pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, openai_fake.API_KEY)
        server = await serve_llm(chat_on=upstream.url, tmp=tmp_path_factory.mktemp("llm"))
        yield server.url, upstream
        await server.stop()


@pytest.fixture(scope="session")
async def slow_llm(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, Upstream]]:
    """The real llm on a fake OpenAI upstream of its own, under a provider name of its own:
    the cancel test leaves requests hanging there, and whatever that does to the provider's
    circuit breaker (shared through Redis by name) stays away from the other tests."""
    from services.llm.app import build_app as build_llm
    from tests.support.servers import serve
    from tests.support.stacks.llm import settings_for

    with fake_openai_upstream() as upstream, pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, openai_fake.API_KEY)
        routing = {
            "providers": {
                "slow": {"kind": "openai", "base_url": f"{upstream.url}/v1", "api_key_env": KEY_ENV}
            },
            "models": {"default": {"targets": [{"provider": "slow", "model": "gpt-4o-mini"}]}},
        }
        server = await serve(build_llm(settings_for(tmp_path_factory.mktemp("slow"), routing)))
        yield server.url, upstream
        await server.stop()
