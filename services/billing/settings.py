"""Settings of the billing service (env prefix ``BILLING_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    service_name: ClassVar[str] = "billing"
    port: int = 8005

    prices_config: str | None = Field(
        default=None,
        description="YAML file of model prices added to (or replacing) the shipped catalogue "
        "(libs/data/prices.yaml shows the shape)",
    )
    plans_config: str | None = Field(
        default=None,
        description="YAML file of plans replacing the shipped ones "
        "(services/billing/plans/defaults.yaml shows the shape)",
    )
    budget_thresholds: list[int] = Field(
        default_factory=lambda: [50, 80, 100],
        description="shares (%) of an organization's monthly budget whose crossing its admins "
        "are told of, once per period (JSON list; [] for none)",
    )
    ledger_batch: int = Field(
        default=5000,
        ge=1,
        le=10_000,
        description="usage events recorded per transaction (one commit, one fsync, each)",
    )
    ledger_claim_idle_s: float = Field(
        default=60.0,
        gt=0,
        description="a usage batch left pending this long by a consumer is taken over by another",
    )
    ledger_partitions_ahead: int = Field(
        default=2, ge=0, le=24, description="monthly ledger partitions created ahead"
    )
    ledger_retention_months: int = Field(
        default=0,
        ge=0,
        description="raw usage events kept this many months (older partitions dropped; the "
        "daily rollups stay); 0 keeps them all",
    )
    stripe_api_key: SecretStr | None = Field(
        default=None,
        description="Stripe secret key (sk_...); unset: subscriptions are changed only by an "
        "admin's PATCH /v1/billing/subscription, never paid",
    )
    stripe_api_base: str | None = Field(
        default=None,
        description="Stripe API base URL (unset: Stripe's); a Stripe emulator's for local runs",
    )
    stripe_webhook_secret: SecretStr | None = Field(
        default=None,
        description="the signing secret of the Stripe webhook endpoint (whsec_...); unset: "
        "/v1/billing/webhooks/stripe answers 404",
    )
    stripe_webhook_tolerance_s: int = Field(
        default=300, ge=1, description="oldest Stripe signature timestamp accepted (seconds)"
    )
    past_due_grace_days: float = Field(
        default=7,
        ge=0,
        description="days a past_due subscription keeps its plan before the organization is "
        "frozen (LLM, embeddings and ingestion refused with account_frozen)",
    )


def get_settings() -> BillingSettings:
    return BillingSettings()
