"""Real servers for the gateway tests: five small upstreams and gateways, all on uvicorn.

Everything runs in the test session's event loop, so a test can hold an upstream at a point
with an ``asyncio.Event`` and see what the client gets meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import build_app
from gateway.settings import GatewaySettings
from libs.registry import NAMES
from tests.support.fakes.auth_fake import FakeAuth
from tests.support.servers import dead_url, serve
from tests.support.stacks.echo import Upstream, echo_app
from tests.support.stacks.stand_ins import (
    FAKE_AUTH,
    Controls,
    Stack,
    upstream_app,
)


@pytest.fixture(scope="session", params=["aiohttp"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The whole setup, once per upstream client backend the gateway can use."""
    backend: str = request.param
    controls = Controls()
    ups = {name: await serve(upstream_app(name, controls, FAKE_AUTH)) for name in NAMES}
    urls = {f"{n}_url": r.url for n, r in ups.items()}
    gw = await serve(
        build_app(
            GatewaySettings.model_validate({"use_redis": False, "upstream_client": backend, **urls})
        )
    )
    degraded_urls = {**urls, "billing_url": dead_url()}
    degraded = await serve(
        build_app(
            GatewaySettings.model_validate(
                {
                    "use_redis": False,
                    "upstream_client": backend,
                    "upstream_read_timeout": 0.5,
                    "ready_timeout": 0.5,
                    "max_body_bytes": 1000,
                    **degraded_urls,
                }
            )
        )
    )
    yield Stack(ups, gw, degraded, controls)
    for r in (gw, degraded, *ups.values()):
        await r.stop()


@pytest.fixture(scope="session")
def owner_token() -> str:
    """An access token of an organization owner (every scope), valid for the session."""
    return FAKE_AUTH.token(roles=["owner"], ttl=86400)


@pytest.fixture
async def gw(stack: Stack, owner_token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.gateway.url,
        timeout=20,
        headers={"authorization": f"Bearer {owner_token}"},
    ) as client:
        yield client


@pytest.fixture
async def degraded(stack: Stack, owner_token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.degraded.url,
        timeout=20,
        headers={"authorization": f"Bearer {owner_token}"},
    ) as client:
        yield client


@pytest.fixture
def controls(stack: Stack) -> Controls:
    c = stack.controls
    c.release.clear()
    c.stream_closed.clear()
    c.finished.clear()
    return c


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    """A service that echoes what the gateway forwarded, behind a fake auth service (modules
    that need other signing keys define their own)."""
    auth = FakeAuth()
    running = await serve(echo_app(auth))
    yield Upstream(auth, running.url)
    await running.stop()
