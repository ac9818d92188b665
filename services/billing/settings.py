"""Settings of the billing service (env prefix ``BILLING_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    service_name: ClassVar[str] = "billing"
    port: int = 8005


def get_settings() -> BillingSettings:
    return BillingSettings()
