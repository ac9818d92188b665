"""The rag service: files, knowledge bases as vector stores, ingestion, search and answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import event

from libs.app import create_app
from libs.registry import SERVICES
from services.rag.answers.router import router as answers_router
from services.rag.core.plan import PlanLimits
from services.rag.files.router import internal_router as files_internal
from services.rag.files.router import router as files_router
from services.rag.ingestion.embed import Embedder
from services.rag.search.router import internal_router as search_internal
from services.rag.search.router import router as search_router
from services.rag.settings import RagSettings, get_settings
from services.rag.state import RagState
from services.rag.storage import make_storage
from services.rag.vector_stores.router import router as vector_stores_router

OPENAI_PREFIXES = tuple(r.prefix for r in SERVICES["rag"].routes if r.openai)


def vector_search_settings(dbapi_connection: Any, _record: Any) -> None:
    """Every connection of rag's pool searches with these, set once when it opens (not a
    round trip per search): 100 candidates per HNSW probe (recall@10 about 0.99 at 100,000
    chunks: docs/benchmarks.md), and iterative scans, so a filtered or multi-store search
    still finds its nearest chunks."""
    dbapi_connection.run_async(
        lambda conn: conn.execute(
            "SET hnsw.ef_search = 100; SET hnsw.iterative_scan = relaxed_order"
        )
    )


def build_app(settings: RagSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def resources(app: FastAPI) -> AsyncIterator[None]:
        state = RagState.of_app(app)
        state.storage = make_storage(settings)
        state.embedder = Embedder(state.http, settings)
        state.plans = PlanLimits(state.redis, settings)
        if state.db.built:
            event.listen(state.db.engine.sync_engine, "connect", vector_search_settings)
        yield

    app = create_app(
        service="rag",
        settings=settings,
        # search first: POST /v1/vector_stores/search is not a store named "search"
        routers=[
            search_router,
            search_internal,
            answers_router,
            files_router,
            files_internal,
            vector_stores_router,
        ],
        title="aistack rag",
        resources=[resources],
        openai_error_prefixes=OPENAI_PREFIXES,
        state=RagState,
        body_limits={"/internal/files": settings.max_upload_bytes},
    )
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.rag.app:app``."""
    return build_app()
