"""Settings of the gateway (env prefix ``GATEWAY_``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings

SERVICES = ("auth", "llm", "rag", "jobs", "billing")


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    service_name: ClassVar[str] = "gateway"
    port: int = 8000

    auth_url: str = "http://127.0.0.1:8001"
    llm_url: str = "http://127.0.0.1:8002"
    rag_url: str = "http://127.0.0.1:8003"
    jobs_url: str = "http://127.0.0.1:8004"
    billing_url: str = "http://127.0.0.1:8005"

    # aiohttp when installed (much faster pool), else httpx
    upstream_client: Literal["auto", "aiohttp", "httpx"] = "auto"
    upstream_connect_timeout: float = 2.0
    # generous: an SSE answer may stay silent while a model thinks
    upstream_read_timeout: float = 300.0
    upstream_write_timeout: float = 30.0
    upstream_pool_timeout: float = 5.0
    upstream_max_connections: int = 512
    upstream_max_keepalive: int = 128

    ready_timeout: float = 2.0
    openapi_cache_ttl: float = 300.0
    # a service builds its document on first request, which can take a moment
    openapi_fetch_timeout: float = 10.0
    # behind a trusted load balancer, keep the x-forwarded-* it sets; else they are replaced
    trust_forwarded_headers: bool = False
    use_redis: bool = True

    def service_urls(self) -> dict[str, str]:
        """Base URL of every service, by name."""
        return {name: str(getattr(self, f"{name}_url")).rstrip("/") for name in SERVICES}


def get_settings() -> GatewaySettings:
    return GatewaySettings()
