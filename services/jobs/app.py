"""The jobs service: background jobs, schedules and notifications."""

from __future__ import annotations

from fastapi import FastAPI

from libs.app import create_app
from services.jobs.jobs.router import router
from services.jobs.settings import JobsSettings, get_settings
from services.jobs.state import JobsState


def build_app(settings: JobsSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = create_app(
        service="jobs",
        settings=settings,
        routers=[router],
        title="aistack jobs",
        description="Background jobs, schedules and notifications.",
        state=JobsState,
    )
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.jobs.app:app``."""
    return build_app()
