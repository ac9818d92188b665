"""The billing service: plans, subscriptions, usage and invoices."""

from __future__ import annotations

from fastapi import FastAPI

from libs.app import create_app
from services.billing.router import routers
from services.billing.settings import BillingSettings, get_settings


def build_app(settings: BillingSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = create_app(
        service="billing",
        settings=settings,
        routers=routers,
        title="aistack billing",
    )
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.billing.app:app``."""
    return build_app()
