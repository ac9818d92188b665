"""Settings of the auth service (env prefix ``AUTH_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore")

    service_name: ClassVar[str] = "auth"
    port: int = 8001


def get_settings() -> AuthSettings:
    return AuthSettings()
