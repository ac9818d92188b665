"""Settings of the jobs service (env prefix ``JOBS_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class JobsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="JOBS_", extra="ignore")

    service_name: ClassVar[str] = "jobs"
    port: int = 8004
    auth_url: str = Field(
        default="http://127.0.0.1:8001",
        description="the auth service (internal HTTP): is a caller a platform administrator?",
    )
    llm_url: str = Field(
        default="http://127.0.0.1:8002", description="the llm service: a batch's requests"
    )
    rag_url: str = Field(
        default="http://127.0.0.1:8003", description="the rag service: a batch's files"
    )
    sse_recheck_seconds: float = Field(
        default=5.0,
        gt=0,
        description="a job's progress stream is pushed; quiet this long, it reads the job's "
        "record again (a safety net)",
    )
    sse_heartbeat_seconds: float = Field(
        default=15.0,
        gt=0,
        description="a comment on a quiet progress stream this often, so proxies keep it open",
    )
    consumer_block_ms: int = Field(
        default=5000, gt=0, description="the events recorder's longest wait for new events"
    )
    consumer_claim_idle_ms: int = Field(
        default=60_000,
        gt=0,
        description="events a dead recorder read but did not apply are taken over after this",
    )
    reconcile_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="the reconciler checks unfinished jobs' records against Redis this often "
        "(enqueues again what Redis lost)",
    )
    reconcile_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="and leaves a record alone until it has had no event for this long",
    )
    schedule_tick_s: float = Field(
        default=1.0, gt=0, description="the scheduler looks for due schedules this often"
    )
    schedule_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="a tick older than this when the scheduler sees it was missed (skipped or "
        "run once, as the schedule says)",
    )
    max_schedules_per_org: int = Field(default=100, ge=0, description="schedules per organization")
    retention_succeeded_days: int = Field(
        default=14,
        ge=0,
        description="succeeded jobs' records are deleted this long after they finished (0: kept)",
    )
    retention_cancelled_days: int = Field(default=14, ge=0, description="cancelled jobs' records")
    retention_failed_days: int = Field(default=30, ge=0, description="failed jobs' records")
    retention_dead_days: int = Field(default=30, ge=0, description="dead letters")
    retention_internal_days: int = Field(
        default=2, ge=0, description="internal jobs' records (platform bookkeeping), any status"
    )
    batch_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="requests one batch has in flight to the llm at once (the owner's rate "
        "limits apply too: a 429 waits and sends again)",
    )
    batch_max_lines: int = Field(
        default=50_000, ge=1, description="most requests in one batch's input file"
    )
    batch_max_file_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1, description="largest batch input file"
    )
    entitlements_ttl_seconds: float = Field(
        default=5.0,
        ge=0,
        description="how long a jobs process keeps an organization's plan (its batch_jobs "
        "limit) read from Redis (a plan change applies within this)",
    )
    batch_request_timeout_s: float = Field(
        default=600.0, gt=0, description="one batch request's longest wait for the llm"
    )
    batch_poll_s: float = Field(
        default=0.5,
        gt=0,
        description="a running batch checks for cancellation and expiry this often",
    )
    batch_flush_s: float = Field(
        default=0.5,
        gt=0,
        description="a running batch records its finished requests and reports progress this often",
    )
    notification_stream_max_s: float = Field(
        default=600,
        gt=0,
        description="a live notification stream ends after this long (the client reconnects "
        "with Last-Event-ID, its credentials checked again)",
    )
    worker_max_jobs: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="jobs the jobs worker runs at once (all types); more lets the notification "
        "fan-out gather bigger batches under load",
    )
    notification_batch: int = Field(
        default=200,
        ge=1,
        le=2000,
        description="the worker delivers the notification events its jobs hold at the same "
        "time together, up to this many per transaction",
    )
    webhooks_allow_private: bool | None = Field(
        default=None,
        description="webhook endpoints may point at private, loopback or link-local addresses "
        "(default: only in development)",
    )
    webhook_disable_after_days: float = Field(
        default=5, gt=0, description="an endpoint failing this long is disabled (admins told)"
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=60, description="a webhook delivery's whole request"
    )

    public_url: str = Field(
        default="http://localhost:8000",
        description="the gateway's public URL: mails' unsubscribe links point there",
    )
    smtp_host: str = Field(default="127.0.0.1", description="notification mails: SMTP server")
    smtp_port: int = Field(default=25, ge=1, le=65535, description="its port")
    smtp_user: str | None = Field(default=None, description="its user (none: no login)")
    smtp_password: str | None = Field(default=None, description="its password")
    smtp_from: str = Field(
        default="aistack <no-reply@aistack.local>", description="notification mails' From"
    )
    smtp_starttls: bool = Field(default=False, description="STARTTLS before sending")
    smtp_timeout: float = Field(default=10.0, gt=0, description="seconds per SMTP exchange")

    @property
    def private_webhooks(self) -> bool:
        if self.webhooks_allow_private is None:
            return self.is_development
        return self.webhooks_allow_private


def get_settings() -> JobsSettings:
    return JobsSettings()
