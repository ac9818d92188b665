"""What the gateway app holds for its life (typed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from libs.state import AppState

if TYPE_CHECKING:
    import httpx

    from gateway.openapi import OpenAPICache
    from gateway.proxy import Proxy
    from gateway.settings import GatewaySettings
    from libs.app import ReadyCheck


class GatewayState(AppState):
    settings: GatewaySettings
    proxy: Proxy
    # the client that asks the services for /ready and their OpenAPI documents
    ready_client: httpx.AsyncClient
    # the gateway's own readiness checks (Redis), beside every service's /ready
    gateway_checks: dict[str, ReadyCheck]
    openapi_cache: OpenAPICache
    # the gateway's own routes in the merged document, and that part built once
    own_routes: list[Any]
    own_spec: dict[str, Any] | None
    # Swagger UI's assets are served from the installed package (no CDN)
    swagger_local: bool
    # readiness as last logged (None: not asked yet), and whether it was ever all ready
    was_ready: bool | None
    ever_ready: bool
