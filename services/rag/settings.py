"""Settings of the rag service (env prefix ``RAG_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class RagSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore")

    service_name: ClassVar[str] = "rag"
    port: int = 8003


def get_settings() -> RagSettings:
    return RagSettings()
