"""Settings of the jobs service (env prefix ``JOBS_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class JobsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="JOBS_", extra="ignore")

    service_name: ClassVar[str] = "jobs"
    port: int = 8004
    # other services over internal HTTP: auth (is the caller a platform administrator?), llm
    # (a batch's requests), rag (a batch's files)
    auth_url: str = "http://127.0.0.1:8001"
    llm_url: str = "http://127.0.0.1:8002"
    rag_url: str = "http://127.0.0.1:8003"
    # a progress stream quiet this long reads the job's record again (a safety net: events
    # are pushed, see services/jobs/jobs/stream.py)
    sse_recheck_seconds: float = 5.0
    # a comment line on a quiet event stream, so proxies and clients do not time it out
    sse_heartbeat_seconds: float = 15.0
    # how long the events consumer blocks on XREADGROUP before looping
    consumer_block_ms: int = 5000
    # pending events of a dead consumer are claimed after this idle time
    consumer_claim_idle_ms: int = 60_000
    # the reconciler: every this often it checks unfinished jobs' records against Redis
    reconcile_interval_s: float = 10.0
    # and leaves a record alone until it has had no event for this long
    reconcile_grace_s: float = 30.0
    # the scheduler looks for due schedules this often; a tick older than the grace was missed
    schedule_tick_s: float = 1.0
    schedule_grace_s: float = 60.0
    max_schedules_per_org: int = 100
    # retention: finished job records are deleted this many days after they finished, by
    # status (0: kept), and internal ones (platform bookkeeping) after their own
    retention_succeeded_days: int = 14
    retention_cancelled_days: int = 14
    retention_failed_days: int = 30
    retention_dead_days: int = 30
    retention_internal_days: int = 2


def get_settings() -> JobsSettings:
    return JobsSettings()
