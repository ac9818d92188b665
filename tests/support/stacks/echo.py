"""A gateway in front of one echo upstream that also plays the auth service (tests, bench)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from gateway.app import build_app
from gateway.settings import GatewaySettings
from libs.identity import INTERNAL_HEADER, Principal, verify_internal_token
from libs.registry import NAMES
from libs.settings import DEV_INTERNAL_SECRET
from libs.testing import client_for
from tests.support.fakes.auth_fake import FakeAuth


def echo_app(auth: FakeAuth) -> FastAPI:
    """Every service at once: the fake auth endpoints, and an echo of anything else."""
    app = FastAPI()
    app.include_router(auth.router())

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(
            {"path": request.url.path, "method": request.method, "headers": dict(request.headers)}
        )

    app.add_api_route("/{path:path}", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    return app


def gateway_settings(upstream_url: str, redis_url: str, **overrides: Any) -> GatewaySettings:
    """A gateway whose every service is ``upstream_url``."""
    return GatewaySettings.model_validate(
        {
            "use_redis": True,
            "redis_url": redis_url,
            "jwks_min_refetch_interval": 0.2,
            **{f"{name}_url": upstream_url for name in NAMES},
            **overrides,
        }
    )


@asynccontextmanager
async def gateway_client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of a gateway app (lifespan running)."""
    async with client_for(build_app(settings)) as client:
        yield client


def forwarded_principal(resp: httpx.Response) -> Principal | None:
    """The principal the upstream received with an echoed request, if any."""
    assert resp.status_code == 200, resp.text
    token = resp.json()["headers"].get(INTERNAL_HEADER)
    return verify_internal_token(token, DEV_INTERNAL_SECRET) if token else None


@dataclass
class Upstream:
    auth: FakeAuth
    url: str
