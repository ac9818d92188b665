"""The billing service: plans, subscriptions, usage and invoices."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from libs.app import create_app
from libs.prices import load_catalogue
from services.billing.plans.catalogue import load_plans
from services.billing.plans.service import publish_default
from services.billing.router import routers
from services.billing.settings import BillingSettings, get_settings
from services.billing.state import BillingState

log = logging.getLogger("aistack.billing")


def build_app(settings: BillingSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # read at build: a broken prices or plans file stops the start with its reason
    prices = load_catalogue(settings.prices_config)
    plans = load_plans(settings.plans_config)

    @asynccontextmanager
    async def resources(app: FastAPI) -> AsyncIterator[None]:
        state = BillingState.of_app(app)
        state.prices, state.plans = prices, plans
        try:
            await publish_default(state.redis, plans)
        except Exception as exc:  # Redis down at start: the worker publishes it too
            log.warning("default entitlements not published (%s)", exc)
        yield

    return create_app(
        service="billing",
        settings=settings,
        routers=routers,
        title="aistack billing",
        resources=[resources],
        state=BillingState,
    )


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.billing.app:app``."""
    return build_app()
