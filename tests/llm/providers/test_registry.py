"""Adapters are found through the ``aistack.llm_providers`` entry points."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from services.llm.providers import registry
from services.llm.providers.anthropic import AnthropicProvider
from services.llm.providers.azure import AzureOpenAIProvider
from services.llm.providers.base import ChatRequest, Provider
from services.llm.providers.gemini import GeminiProvider
from services.llm.providers.local import LocalProvider
from services.llm.providers.ollama import OllamaProvider
from services.llm.providers.openai import OpenAIProvider


class EchoProvider(Provider):
    """What a third-party package would register."""

    kind = "echo"

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        return {"echo": request.messages}

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        yield {"echo": request.messages}


@pytest.mark.parametrize(
    ("kind", "cls", "config"),
    [
        ("openai", OpenAIProvider, {}),
        ("azure", AzureOpenAIProvider, {"endpoint": "https://acme.openai.azure.com"}),
        ("anthropic", AnthropicProvider, {}),
        ("gemini", GeminiProvider, {}),
        ("ollama", OllamaProvider, {}),
        ("local", LocalProvider, {}),
    ],
)
async def test_builtin_kinds(kind: str, cls: type[Provider], config: dict[str, Any]) -> None:
    provider = registry.build_provider(kind, f"my-{kind}", config)
    assert type(provider) is cls
    assert (provider.kind, provider.name) == (kind, f"my-{kind}")
    await provider.aclose()


def test_config_is_copied() -> None:
    config: dict[str, Any] = {"base_url": "http://x/v1"}
    provider = registry.build_provider("openai", "o", config)
    provider.config["base_url"] = "changed"
    assert config == {"base_url": "http://x/v1"}


def test_unknown_kind_names_the_installed_ones() -> None:
    with pytest.raises(registry.UnknownProviderKind) as info:
        registry.build_provider("openia", "x", {})
    assert "'openia'" in info.value.message
    assert "openai" in info.value.message and "local" in info.value.message
    assert info.value.code == "unknown_provider_kind"


@pytest.fixture
def third_party(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    points = {
        **registry._entry_points(),
        "echo": EntryPoint("echo", f"{__name__}:EchoProvider", registry.GROUP),
        "broken": EntryPoint("broken", f"{__name__}:test_config_is_copied", registry.GROUP),
    }
    monkeypatch.setattr(registry, "_entry_points", lambda: points)
    registry.provider_class.cache_clear()
    yield
    registry.provider_class.cache_clear()


@pytest.mark.usefixtures("third_party")
async def test_a_package_can_add_a_provider() -> None:
    assert "echo" in registry.kinds()
    provider = registry.build_provider("echo", "e", {})
    assert await provider.chat(ChatRequest(model="m", messages=[{"role": "user"}])) == {
        "echo": [{"role": "user"}]
    }


@pytest.mark.usefixtures("third_party")
def test_an_entry_point_that_is_no_provider_is_refused() -> None:
    with pytest.raises(registry.UnknownProviderKind) as info:
        registry.build_provider("broken", "b", {})
    assert "not a Provider subclass" in info.value.message
