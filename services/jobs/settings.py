"""Settings of the jobs service (env prefix ``JOBS_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class JobsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="JOBS_", extra="ignore")

    service_name: ClassVar[str] = "jobs"
    port: int = 8004
    # how often the SSE progress stream re-reads a job
    sse_poll_seconds: float = 0.5
    # a comment line on a quiet event stream, so proxies and clients do not time it out
    sse_heartbeat_seconds: float = 15.0
    # how long the events consumer blocks on XREADGROUP before looping
    consumer_block_ms: int = 5000
    # pending events of a dead consumer are claimed after this idle time
    consumer_claim_idle_ms: int = 60_000


def get_settings() -> JobsSettings:
    return JobsSettings()
