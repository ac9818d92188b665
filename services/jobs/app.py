"""The jobs service: background jobs, schedules and notifications."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from libs.app import create_app
from libs.entitlements import EntitlementsCache
from libs.registry import SERVICES
from services.jobs.batches.router import router as batches_router
from services.jobs.email.router import router as unsubscribe_router
from services.jobs.jobs.router import router as jobs_router
from services.jobs.notifications.router import router as notifications_router
from services.jobs.notifications.schemas import add_payload_schemas
from services.jobs.preferences.router import router as preferences_router
from services.jobs.queues.router import router as queues_router
from services.jobs.schedules.router import router as schedules_router
from services.jobs.settings import JobsSettings, get_settings
from services.jobs.state import JobsState
from services.jobs.types.router import router as types_router
from services.jobs.webhooks.router import router as webhooks_router

OPENAI_PREFIXES = tuple(r.prefix for r in SERVICES["jobs"].routes if r.openai)


def build_app(settings: JobsSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def resources(app: FastAPI) -> AsyncIterator[None]:
        state = JobsState.of_app(app)
        state.plans = EntitlementsCache(state.redis, settings.entitlements_ttl_seconds)
        yield

    app = create_app(
        service="jobs",
        settings=settings,
        # the fixed paths under /v1/jobs first: /v1/jobs/{job_id} would take them
        # /v1/notifications/{id} would take webhooks, preferences and unsubscribe: first
        routers=[
            types_router,
            schedules_router,
            jobs_router,
            queues_router,
            batches_router,
            webhooks_router,
            preferences_router,
            unsubscribe_router,
            notifications_router,
        ],
        title="aistack jobs",
        openai_error_prefixes=OPENAI_PREFIXES,
        state=JobsState,
        resources=[resources],
    )
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_payload_schemas(base())
        return app.openapi_schema or base()

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.jobs.app:app``."""
    return build_app()
