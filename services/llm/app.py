"""The llm service: openai-compatible llm api over many providers."""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from typing import Any

from fastapi import FastAPI
from starlette.middleware import Middleware

from libs.app import create_app
from libs.disconnect import CancelOnDisconnect, provider_call
from libs.http import make_http_client
from services.llm.chat.hot_route import ChatEndpoint, is_chat_completion
from services.llm.chat.metering import UsagePublisher
from services.llm.chat.router import OPENAI_PREFIXES
from services.llm.chat.router import router as chat_router
from services.llm.chat.service import ChatService
from services.llm.conversations.router import router as conversations_router
from services.llm.legacy.router import router as legacy_router
from services.llm.prompts.router import router as prompts_router
from services.llm.providers.base import Provider
from services.llm.responses.file_search import RagSearch
from services.llm.responses.router import PREFIX as RESPONSES_PREFIX
from services.llm.responses.router import router as responses_router
from services.llm.routing.config import RoutingConfig, default_config, load_config
from services.llm.settings import LlmSettings, get_settings
from services.llm.state import LlmState
from services.llm.tokens import tokenizer

log = logging.getLogger("aistack.llm")

ProviderFactory = Callable[[str, str, dict[str, Any]], Provider]
ENTRY_POINT_GROUP = "aistack.llm_providers"


def _entry_point_factory(kind: str, name: str, config: dict[str, Any]) -> Provider:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            cls = ep.load()
            provider: Provider = cls(name, config)
            return provider
    raise ValueError(f"no provider adapter of kind {kind!r} (entry points {ENTRY_POINT_GROUP})")


def default_provider_factory() -> ProviderFactory:
    """The providers registry's ``build_provider`` (entry points), else a direct lookup."""
    try:
        registry = importlib.import_module("services.llm.providers.registry")
    except ImportError:
        return _entry_point_factory
    factory: ProviderFactory = registry.build_provider
    return factory


def load_routing(settings: LlmSettings) -> RoutingConfig:
    """The routing file named by LLM_MODELS_CONFIG, else the built-in local default."""
    if settings.models_config:
        return load_config(settings.models_config)
    return default_config()


def build_app(
    settings: LlmSettings | None = None,
    *,
    provider_factory: ProviderFactory | None = None,
    usage_publisher: UsagePublisher | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    # read the routing file now so a broken file fails the process at start, not at first call
    config = load_routing(settings)

    @asynccontextmanager
    async def llm_resources(app: FastAPI) -> AsyncIterator[None]:
        # LLM_TOKENIZER_PRELOAD: loaded in a thread before the app is ready, not on a request
        await tokenizer.preload(settings.tokenizers_to_preload)
        factory = provider_factory or default_provider_factory()
        providers: dict[str, Provider] = {}
        for name, spec in config.providers.items():
            providers[name] = factory(spec.kind, name, spec.adapter_config())
        state = LlmState.of_app(app)
        service = ChatService(settings, config, providers, state.redis, usage_publisher)
        state.llm = service
        service.sessions = lambda: getattr(state, "db", None)
        rag_http = make_http_client(
            "llm", timeout=settings.file_search_timeout_s, connect_timeout=2.0, retries=0
        )
        state.rag_search = RagSearch(rag_http, settings.rag_url, settings.internal_token_secret)
        await service.start()
        log.info(
            "llm routing from %s: providers %s, models %s",
            config.source,
            sorted(providers),
            sorted(config.aliases),
        )
        try:
            yield
        finally:
            await rag_http.aclose()
            await service.aclose()

    app = create_app(
        service="llm",
        settings=settings,
        routers=[
            chat_router,
            legacy_router,
            responses_router,
            prompts_router,
            conversations_router,
        ],
        title="aistack llm",
        resources=[llm_resources],
        openai_error_prefixes=(*OPENAI_PREFIXES, RESPONSES_PREFIX),
        # only prompts and conversations use the database: SQLAlchemy loads with the first
        use_database="lazy",
        state=LlmState,
    )
    # a provider call is not left running for a client that left before its answer (its
    # timeout would count against the provider's breaker); innermost, so the access log says 499
    app.user_middleware.append(Middleware(CancelOnDisconnect, service="llm", claims=provider_call))
    # chat completions go from the app's middleware straight to their handler, for speed
    # (services/llm/chat/hot_route.py)
    app.set_hot_route(is_chat_completion, ChatEndpoint())
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.llm.app:app``."""
    return build_app()
