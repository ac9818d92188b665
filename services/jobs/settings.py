"""Settings of the jobs service (env prefix ``JOBS_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class JobsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="JOBS_", extra="ignore")

    service_name: ClassVar[str] = "jobs"
    port: int = 8004


def get_settings() -> JobsSettings:
    return JobsSettings()
