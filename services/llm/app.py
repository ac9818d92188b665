"""The llm service: openai-compatible llm api over many providers."""

from __future__ import annotations

from fastapi import FastAPI

from libs.app import create_app
from services.llm.router import router
from services.llm.settings import LlmSettings, get_settings


def build_app(settings: LlmSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    return create_app(
        service="llm",
        settings=settings,
        routers=[router],
        title="aistack llm",
        description="OpenAI-compatible LLM API over many providers.",
    )


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.llm.app:app``."""
    return build_app()
