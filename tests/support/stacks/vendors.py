"""Aliases routed to Azure OpenAI, Anthropic, Gemini and Ollama fakes (each speaking its
vendor's wire format over real HTTP), and the routing file that names them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from tests.support.fakes import anthropic_fake, gemini_fake, ollama_fake, openai_fake
from tests.support.fakes.vendor_common import Behavior, ToolCall
from tests.support.stacks.llm import Upstream

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


TEXT = "Hello there, how can I help?"


TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]


CALLS = [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_time", {})]


AZURE_KEY_ENV = "AISTACK_TEST_FAKE_AZURE_KEY"


ANTHROPIC_KEY_ENV = "AISTACK_TEST_FAKE_ANTHROPIC_KEY"


GEMINI_KEY_ENV = "AISTACK_TEST_FAKE_GEMINI_KEY"


ANTHROPIC_KEY = "sk-ant-test-789"


GEMINI_KEY = "gemini-key-012"


@dataclass(frozen=True)
class Vendor:
    """One vendor as the routing file names it, and where its fake listens."""

    provider: str  # provider name in the routing file (and on usage events)
    alias: str  # the chat alias clients send
    model: str  # the vendor model the alias routes to
    chat_path: str  # the vendor path a chat request must reach
    embed_alias: str | None = None
    embed_model: str | None = None


VENDORS = {
    "azure": Vendor(
        "azure",
        "az",
        "gpt-4o-mini",
        "/openai/deployments/prod-4o-mini/chat/completions",
        "az-embed",
        "text-embedding-3-small",
    ),
    "anthropic": Vendor("anthropic", "claude", anthropic_fake.MODEL, "/v1/messages"),
    "gemini": Vendor(
        "gemini",
        "gem",
        gemini_fake.MODEL,
        f"/v1beta/models/{gemini_fake.MODEL}:",  # generateContent / streamGenerateContent
        "gem-embed",
        "gemini-embedding-001",
    ),
    "ollama": Vendor(
        "ollama", "llama", ollama_fake.MODEL, "/api/chat", "llama-embed", "nomic-embed-text"
    ),
}


PRICE = {"input": 1.0, "output": 4.0}  # USD per 1M tokens, the same for every chat alias


CHAT_VENDORS = list(VENDORS)


EMBED_VENDORS = [v for v in VENDORS if VENDORS[v].embed_alias]


APPS = {
    "azure": lambda b: openai_fake.make_app(b, azure=True),
    "anthropic": anthropic_fake.make_app,
    "gemini": lambda b: gemini_fake.make_app(b, api_key=GEMINI_KEY),
    "ollama": ollama_fake.make_app,
}


def vendor_routing(up: dict[str, Upstream]) -> dict[str, Any]:
    def chat(v: Vendor) -> dict[str, Any]:
        return {
            "context_window": 128000,
            "price": PRICE,
            "targets": [{"provider": v.provider, "model": v.model}],
        }

    def embed(v: Vendor) -> dict[str, Any]:
        return {
            "type": "embedding",
            "price": {"input": 0.5},
            "targets": [{"provider": v.provider, "model": v.embed_model}],
        }

    models: dict[str, Any] = {v.alias: chat(v) for v in VENDORS.values()}
    models.update({v.embed_alias: embed(v) for v in VENDORS.values() if v.embed_alias})
    # an embedding alias on a vendor without an embeddings API (a configuration mistake)
    models["claude-embed"] = {
        "type": "embedding",
        "targets": [{"provider": "anthropic", "model": anthropic_fake.MODEL}],
    }
    models["gem-then-az"] = {
        "targets": [
            {"provider": "gemini", "model": gemini_fake.MODEL},
            {"provider": "azure", "model": "gpt-4o-mini"},
        ]
    }
    models["tiny"] = {
        "context_window": 2048,
        "targets": [{"provider": "local", "model": "smollm2-135m-instruct"}],
    }
    return {
        "providers": {
            "azure": {
                "kind": "azure",
                "endpoint": up["azure"].url,
                "api_key_env": AZURE_KEY_ENV,
                "deployments": {"gpt-4o-mini": "prod-4o-mini", "text-embedding-3-small": "emb"},
                "timeout": 5,
            },
            "anthropic": {
                "kind": "anthropic",
                "base_url": up["anthropic"].url,
                "api_key_env": ANTHROPIC_KEY_ENV,
                "default_max_tokens": 321,
                "timeout": 5,
            },
            "gemini": {
                "kind": "gemini",
                "base_url": up["gemini"].url,
                "api_key_env": GEMINI_KEY_ENV,
                "timeout": 5,
            },
            "ollama": {"kind": "ollama", "base_url": up["ollama"].url, "timeout": 5},
            "local": {"kind": "local"},
        },
        "models": models,
    }


@dataclass
class Case:
    """A vendor under test: its routing entry and its fake."""

    vendor: Vendor
    upstream: Upstream

    @property
    def behavior(self) -> Behavior:
        return self.upstream.behavior

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.behavior.requests if self.vendor.chat_path in r["path"]]


def stream_payload(case: Case) -> bytes:
    """The bytes the vendor's fake streams for its current behaviour."""
    b = case.behavior
    match case.vendor.provider:
        case "azure":
            return openai_fake.sse(
                openai_fake.chunks(b, openai_fake.MODEL, include_usage=True, azure=True), b
            )
        case "anthropic":
            return anthropic_fake.sse(anthropic_fake.events(b, case.vendor.model), b)
        case "gemini":
            return gemini_fake.sse(gemini_fake.chunks(b), b)
        case _:
            return ollama_fake.ndjson(ollama_fake.lines(b, case.vendor.model), b)
