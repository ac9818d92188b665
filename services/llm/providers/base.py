"""The provider interface every LLM adapter implements.

The canonical wire format inside aistack is OpenAI's Chat Completions format: requests are
:class:`ChatRequest` (OpenAI's request body), non-streamed answers are OpenAI
``chat.completion`` dicts and streamed answers are OpenAI ``chat.completion.chunk`` dicts
(the last one carrying ``usage``). Each adapter translates to and from its vendor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


class ProviderError(Exception):
    """An upstream failure, classified so routing can decide to retry or fall back."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        retryable: bool = False,
        retry_after: float | None = None,
        provider: str = "",
        code: str = "upstream_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.provider = provider
        self.code = code

    def with_message(self, message: str) -> ProviderError:
        """The same failure told in other words."""
        return ProviderError(
            message,
            status=self.status,
            retryable=self.retryable,
            retry_after=self.retry_after,
            provider=self.provider,
            code=self.code,
        )


@dataclass
class ChatRequest:
    """An OpenAI-format chat request addressed to one provider model."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    """Everything else of the OpenAI body: temperature, top_p, max_tokens, stop, tools,
    tool_choice, response_format, seed, n, user, ..."""


@dataclass
class EmbeddingRequest:
    model: str
    input: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    input_type: str | None = None
    """aistack: ``query`` or ``passage``, for models that embed them apart (e5); never sent
    to a vendor."""


@dataclass
class ModelInfo:
    id: str
    owned_by: str
    context_window: int | None = None


class Provider(ABC):
    """One configured upstream (a vendor account or a local model)."""

    #: adapter kind, the entry point name (``openai``, ``azure``, ``anthropic``, ...)
    kind: str = ""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config

    @abstractmethod
    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        """Return an OpenAI ``chat.completion`` dict (with ``usage``)."""

    @abstractmethod
    def stream_chat(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """Yield OpenAI ``chat.completion.chunk`` dicts; the last one carries ``usage``."""

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        """Return an OpenAI embeddings response dict (``object: list``, ``data``, ``usage``)."""
        raise ProviderError(
            f"provider {self.name} does not support embeddings", status=400, code="unsupported"
        )

    async def list_models(self) -> list[ModelInfo]:
        """Models this provider serves (may be static configuration)."""
        return []

    async def aclose(self) -> None:
        """Release connections."""
        return None
