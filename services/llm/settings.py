"""Settings of the llm service (env prefix ``LLM_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class LlmSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLM_", extra="ignore")

    service_name: ClassVar[str] = "llm"
    port: int = 8002


def get_settings() -> LlmSettings:
    return LlmSettings()
