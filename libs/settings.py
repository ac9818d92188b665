"""Settings base: one pydantic-settings class per service, each with its own env prefix.

Infrastructure settings every process shares (``DATABASE_URL``, ``REDIS_URL``, the internal
token secret, ...) can be given once without a prefix; ``<PREFIX>_DATABASE_URL`` overrides it
for a single service.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEV_INTERNAL_SECRET = "dev-internal-token-secret-change-me-0000000000"
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:54329/aistack"
DEFAULT_REDIS_URL = "redis://127.0.0.1:63799/0"
WORKER_REDIS_TIMEOUT_S = 5.0
# PostgreSQL deadlines (libs/db.py:make_engine): statements on the request path take
# milliseconds and the longest legitimate ones (batched purges, vector searches) well under a
# second, so 10 s is an order of magnitude past them, yet far below the gateway's upstream
# read timeout and a client's patience: a hung server is a 503 in seconds, not a hang.
DB_COMMAND_TIMEOUT_S = 10.0
DB_POOL_TIMEOUT_S = 10.0
# while PostgreSQL is hung, how often the guard asks it again (libs/db_guard.py)
DB_GUARD_RETRY_S = 2.0

Environment = Literal["development", "test", "production"]

SHARED_FIELDS = frozenset(
    {
        "environment",
        "database_url",
        "redis_url",
        "internal_token_secret",
        "log_level",
        "log_json",
        "otlp_endpoint",
        "max_body_bytes",
        "max_upload_bytes",
        "db_pool_size",
        "db_command_timeout_seconds",
        "db_pool_timeout_seconds",
        "db_guard_retry_seconds",
        "worker_redis_timeout_s",
        "worker_job_lease_s",
        "metrics_port",
        "worker_metrics_port",
    }
)
# where a process serves its metrics when no port is set: its own port plus these
METRICS_PORT_OFFSET = 1000
WORKER_METRICS_PORT_OFFSET = 1010


class _SharedEnvSource(EnvSettingsSource):
    """Reads only the shared infrastructure fields, without the service prefix."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        return {k: v for k, v in data.items() if k in SHARED_FIELDS}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name not in SHARED_FIELDS:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class ServiceSettings(BaseSettings):
    """Base settings for every aistack process."""

    model_config = SettingsConfigDict(env_prefix="AISTACK_", extra="ignore", env_file=None)

    service_name: ClassVar[str] = "aistack"

    environment: Environment = "development"
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    internal_token_secret: str = DEV_INTERNAL_SECRET
    internal_token_ttl_seconds: int = 60
    log_level: str = "INFO"
    log_json: bool = True
    otlp_endpoint: str | None = Field(default=None, description="OTLP/HTTP traces endpoint")
    max_body_bytes: int = 1_048_576
    max_upload_bytes: int = Field(
        default=512 * 1_048_576,
        gt=0,
        description="largest file upload (routes the registry marks as uploads, e.g. "
        "POST /v1/files; 413 above); MAX_BODY_BYTES does not apply to them",
    )
    db_pool_size: int = 10
    db_command_timeout_seconds: float = Field(
        default=DB_COMMAND_TIMEOUT_S,
        gt=0,
        description=(
            "PostgreSQL: longest wait for one statement's answer (and for a new connection, "
            "at most 5 s); past it the connection is dropped and the request answers 503 "
            "service_unavailable, so a hung server cannot hang requests or background loops"
        ),
    )
    db_pool_timeout_seconds: float = Field(
        default=DB_POOL_TIMEOUT_S,
        gt=0,
        description=(
            "longest wait for a free connection of the process's pool (DB_POOL_SIZE, and as "
            "many again for bursts); past it: 503 service_unavailable"
        ),
    )
    db_guard_retry_seconds: float = Field(
        default=DB_GUARD_RETRY_S,
        gt=0,
        description=(
            "PostgreSQL hung (no answer within DB_COMMAND_TIMEOUT_SECONDS): requests answer 503 "
            "at once, without waiting, until a probe (SELECT 1, sent this often) sees it answer"
        ),
    )
    worker_redis_timeout_s: float = Field(
        default=WORKER_REDIS_TIMEOUT_S,
        gt=0,
        description=(
            "queue workers: longest wait for a Redis answer before Redis counts as hung and "
            "the worker reconnects (blocking reads get their own wait on top; libs/worker/)"
        ),
    )
    worker_job_lease_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "queue workers: a running job's claim lasts this long unless its worker renews it "
            "(every third of it): a worker killed mid-job has its jobs run again, as their "
            "next attempt, by another worker within about this long"
        ),
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=(
            "Prometheus metrics of an HTTP process, on a listener of its own (any path, "
            "`/metrics`; bound to the process's host, never on the public port); unset: the "
            "process's port + 1000 (gateway 9000, auth 9001 … billing 9005); 0: none. "
            "`<PREFIX>_METRICS_PORT` sets one process's"
        ),
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=(
            "the same for a service's queue worker (`python -m libs.worker <service>`); unset: "
            "the service's port + 1010 (auth-worker 9011 … billing-worker 9015); 0: none"
        ),
    )
    host: str = "127.0.0.1"
    port: int = 8000

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        shared = _SharedEnvSource(settings_cls, env_prefix="", case_sensitive=False)
        return (init_settings, env_settings, shared, dotenv_settings, file_secret_settings)

    @field_validator("metrics_port", "worker_metrics_port", mode="before")
    @classmethod
    def _empty_is_off(cls, value: Any) -> Any:
        # METRICS_PORT= (empty) turns the listener off, as 0 does
        return 0 if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> ServiceSettings:
        if self.environment == "production":
            for name, value in self.secret_values().items():
                if value in _DEFAULT_SECRETS or len(value) < 32:
                    raise ValueError(
                        f"{name} must be set to a strong secret (32+ characters) "
                        "when ENVIRONMENT=production"
                    )
        return self

    def secret_values(self) -> dict[str, str]:
        """Secrets that must not keep their development default in production."""
        return {"internal_token_secret": self.internal_token_secret}

    def metrics_listen_port(self, worker: bool = False) -> int | None:
        """The port of the process's metrics listener (its worker's with ``worker``); None: off."""
        if worker:
            port = self.worker_metrics_port
            default = self.port + WORKER_METRICS_PORT_OFFSET
        else:
            port = self.metrics_port
            default = self.port + METRICS_PORT_OFFSET
        if port is None:
            return default
        return port or None

    @property
    def is_development(self) -> bool:
        return self.environment == "development"


_DEFAULT_SECRETS = {DEV_INTERNAL_SECRET}


def register_default_secret(value: str) -> None:
    """Mark a development default so production refuses it."""
    _DEFAULT_SECRETS.add(value)
