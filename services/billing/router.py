"""HTTP routes of the billing service: every feature's router."""

from __future__ import annotations

from services.billing.checkout.router import router as checkout_router
from services.billing.invoices.router import router as invoices_router
from services.billing.plans.router import router as plans_router
from services.billing.stripe_webhooks.router import router as stripe_router
from services.billing.subscriptions.router import router as subscriptions_router
from services.billing.usage.router import router as usage_router

routers = [
    usage_router,
    plans_router,
    subscriptions_router,
    checkout_router,
    invoices_router,
    stripe_router,
]
