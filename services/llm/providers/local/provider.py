"""LocalProvider: the chat model and the embedding models of this machine, by model id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from services.llm.providers.base import ChatRequest, EmbeddingRequest, ModelInfo, Provider
from services.llm.providers.local.chat import LocalChat
from services.llm.providers.local.config import LocalConfig, model_not_found
from services.llm.providers.local.embedder import E5Embedder, LocalEmbedder, MiniLMEmbedder
from services.llm.providers.local.runtime import Runtime


class LocalProvider(Provider):
    kind = "local"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self.cfg = LocalConfig.read(config)
        self.chat_model = self.cfg.chat_model
        self.embedding_model = self.cfg.embedding_model
        self._chat = LocalChat(name, self.cfg)
        self.embedders: dict[str, LocalEmbedder] = {
            self.cfg.embedding_model.lower(): MiniLMEmbedder(self.cfg.embedding_model, self.cfg),
            self.cfg.e5_model.lower(): E5Embedder(self.cfg.e5_model, self.cfg),
        }

    def _llama(self) -> Runtime:
        return self._chat.runtime()

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        return await self._chat.chat(request)

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        return self._chat.stream_chat(request)

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        embedder = self.embedders.get(request.model.lower())
        if embedder is None:
            served = [e.model_id for e in self.embedders.values()]
            raise model_not_found(self.name, served, request.model)
        return await embedder.embed(request)

    async def list_models(self) -> list[ModelInfo]:
        return [
            ModelInfo(id=self.chat_model, owned_by="local", context_window=self.cfg.n_ctx),
            *(
                ModelInfo(id=e.model_id, owned_by="local", context_window=e.max_tokens)
                for e in self.embedders.values()
            ),
        ]
