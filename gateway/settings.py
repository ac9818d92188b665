"""Settings of the gateway (env prefix ``GATEWAY_``)."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from libs.registry import GATEWAY_PORT, NAMES, SERVICES
from libs.settings import ServiceSettings

REMOVED_UPSTREAM_CLIENTS = frozenset({"pyreqwest", "split", "httpx"})


def _local(service: str) -> str:
    return f"http://127.0.0.1:{SERVICES[service].port}"


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    service_name: ClassVar[str] = "gateway"
    port: int = GATEWAY_PORT

    auth_url: str = _local("auth")
    llm_url: str = _local("llm")
    rag_url: str = _local("rag")
    jobs_url: str = _local("jobs")
    billing_url: str = _local("billing")

    # the HTTP client to the services: aiohttp (auto is the same); pyreqwest, split and httpx
    # were removed and are refused (docs/benchmarks.md, "One transport layer")
    upstream_client: Literal["auto", "aiohttp"] = "auto"
    upstream_connect_timeout: float = 2.0
    # generous: an SSE answer may stay silent while a model thinks
    upstream_read_timeout: float = 300.0
    # how long a service may leave one chunk of a streamed request body untaken
    upstream_write_timeout: float = 30.0
    # how long a request may wait for a free connection when all are busy
    upstream_pool_timeout: float = 5.0
    upstream_max_connections: int = 512

    ready_timeout: float = 2.0
    openapi_cache_ttl: float = 300.0
    # a service builds its document on first request, which can take a moment
    openapi_fetch_timeout: float = 10.0
    # behind a trusted load balancer, keep the x-forwarded-* it sets; else they are replaced
    trust_forwarded_headers: bool = False
    use_redis: bool = True

    # access tokens (JWTs signed by the auth service, checked here against its JWKS)
    jwt_issuer: str = "aistack"
    jwt_audience: str = "aistack-api"
    jwt_leeway_seconds: int = 5
    # default: the auth service's /.well-known/jwks.json
    jwks_url: str | None = None
    jwks_cache_ttl: float = 300.0
    # an unknown kid refetches the JWKS at most this often, so bogus kids cannot flood auth
    jwks_min_refetch_interval: float = 5.0
    auth_timeout: float = 2.0

    # API keys: introspected at the auth service, cached in-process and in Redis
    # bounds how long a revoked key lives on here if the revocation message is lost
    api_key_local_ttl: float = Field(default=0.5, ge=0, le=1.0)
    api_key_cache_ttl: int = 30
    api_key_negative_ttl: int = 5
    # while the auth service cannot answer (down, or its database is), a key it confirmed
    # within this many seconds keeps working (0: refuse every key until auth answers)
    api_key_stale_seconds: int = Field(default=300, ge=0)

    # requests per window, per API key (when the key sets no rpm_limit), user and organization
    rate_limit_enabled: bool = True
    rate_limit_window_seconds: int = 60
    rate_limit_key_rpm: int = 600
    rate_limit_user_rpm: int = 600
    rate_limit_org_rpm: int = Field(
        default=3000,
        description="requests per window of an organization billing published no plan for "
        "(its plan's rpm applies otherwise: libs/entitlements.py)",
    )
    entitlements_ttl_seconds: float = Field(
        default=5.0,
        ge=0,
        description="how long a gateway process keeps an organization's plan limits read "
        "from Redis (a plan change applies within this)",
    )
    # a busy caller's units are counted in Redis in small leases instead of one round trip per
    # request; a lease is at most this fraction of the smallest limit involved (0: exact)
    rate_limit_lease_fraction: float = Field(default=0.01, ge=0, le=0.1)
    # failed authentications per client address per window; then 429 (0: no limit)
    rate_limit_auth_failures: int = 30
    # Redis down or hung: count per gateway process instead ("open") or refuse with 503
    # ("closed"); see gateway/ratelimit.py
    rate_limit_fail_mode: Literal["open", "closed"] = "open"

    # Redis on the request path (API-key cache, rate limits, session revocations): the longest
    # one call may take; after one fails or times out Redis is skipped by every request until
    # a background probe (every redis_retry_seconds) hears from it again (libs/redis.py)
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=5)
    # while Redis is skipped, how often the background probe PINGs it
    redis_retry_seconds: float = Field(default=2.0, gt=0, le=60)
    # Redis unavailable: a session this process found not revoked within this long stays
    # usable; others are refused with 503 (0: refuse all). See gateway/revocations.py
    session_revocation_grace_seconds: float = Field(default=30.0, ge=0, le=900)

    # browsers: origins allowed to call the API (none by default)
    # JSON list or comma-separated
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    cors_max_age: int = 600
    # the gateway sits behind TLS (a terminating load balancer): always send HSTS
    behind_tls: bool = False
    hsts_max_age: int = 31_536_000

    @field_validator("upstream_client", mode="before")
    @classmethod
    def _refuse_removed_clients(cls, value: Any) -> Any:
        if value in REMOVED_UPSTREAM_CLIENTS:
            raise ValueError(
                f"upstream client {value!r} was removed: aiohttp is the only one (set 'auto' or "
                "'aiohttp'; docs/benchmarks.md, 'One transport layer', has the measurements)"
            )
        return value

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [o.strip() for o in text.split(",") if o.strip()]
        return value

    def resolved_jwks_url(self) -> str:
        """Where the JWKS is fetched from."""
        return self.jwks_url or f"{str(self.auth_url).rstrip('/')}/.well-known/jwks.json"

    def service_urls(self) -> dict[str, str]:
        """Base URL of every service, by name."""
        return {name: str(getattr(self, f"{name}_url")).rstrip("/") for name in NAMES}


def get_settings() -> GatewaySettings:
    return GatewaySettings()
