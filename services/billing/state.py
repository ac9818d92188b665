"""What the billing app holds for its life (typed): settings, prices, plans."""

from __future__ import annotations

from libs.prices import PriceCatalogue
from libs.state import AppState
from services.billing.plans.catalogue import PlanCatalogue
from services.billing.settings import BillingSettings


class BillingState(AppState):
    settings: BillingSettings
    prices: PriceCatalogue
    plans: PlanCatalogue
