"""The rag service: knowledge bases, ingestion and cited answers."""

from __future__ import annotations

from fastapi import FastAPI

from libs.app import create_app
from services.rag.router import router
from services.rag.settings import RagSettings, get_settings


def build_app(settings: RagSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = create_app(
        service="rag",
        settings=settings,
        routers=[router],
        title="aistack rag",
    )
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.rag.app:app``."""
    return build_app()
