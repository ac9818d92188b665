"""Real servers for the gateway tests: five small upstreams and gateways, all on uvicorn.

Everything runs in the test session's event loop, so a test can hold an upstream at a point
with an ``asyncio.Event`` and see what the client gets meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route as StarletteRoute

from gateway.app import build_app
from gateway.settings import SERVICES, GatewaySettings
from libs.app import create_app
from libs.errors import Conflict
from libs.settings import ServiceSettings
from tests.gateway.authfake import FakeAuth
from tests.gateway.authstack import Upstream, echo_app
from tests.gateway.rag_models import Item as RagItem

# the stack's auth upstream publishes this JWKS; the clients below carry one of its tokens
FAKE_AUTH = FakeAuth()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # the test runner owns the signal handlers
        yield


@dataclass
class Running:
    url: str
    server: _Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def serve(app: Any, **options: Any) -> Running:
    """Start ``app`` on a free port in this loop and wait until it accepts connections
    (``options``: more of uvicorn's Config, e.g. ``http``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", log_config=None, access_log=False, proxy_headers=False, **options
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return Running(f"http://127.0.0.1:{port}", server, task)


def dead_url() -> str:
    """A URL where nothing listens."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@dataclass
class Controls:
    """Knobs the streaming upstream waits on, reset per test."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class Shared(BaseModel):
    """Defined identically by two services: stays one schema."""

    id: str


class Item(BaseModel):
    name: str


def upstream_app(name: str, controls: Controls, auth: FakeAuth | None = None) -> FastAPI:
    """A service stand-in that says who it is and echoes what it got."""
    router = APIRouter(tags=[name])
    if name == "auth" and auth is not None:
        router.include_router(auth.router(), include_in_schema=False)
    prefix = {
        "auth": "/v1/auth",
        "llm": "/v1/chat",
        "rag": "/v1/knowledge-bases",
        "jobs": "/v1/jobs",
        "billing": "/v1/billing",
    }[name]

    if name == "rag":

        @router.post(f"{prefix}", status_code=201)
        async def create_kb(body: RagItem) -> RagItem:
            return body

    else:

        @router.post(f"{prefix}/items", status_code=201)
        async def create_item(body: Item) -> Item:
            return body

    @router.get(f"{prefix}/shared")
    async def shared() -> Shared:
        return Shared(id=name)

    @router.get(f"{prefix}/conflict")
    async def conflict() -> None:
        raise Conflict("Already there", code="already_exists", details={"who": name})

    @router.get("/v1/unrouted-by-gateway")
    async def unrouted() -> dict[str, str]:
        return {"service": name}

    @router.get("/internal/secret")
    async def internal() -> dict[str, str]:
        return {"secret": name}

    if name == "llm":

        @router.get("/v1/chat/stream")
        async def stream() -> StreamingResponse:
            async def events() -> AsyncIterator[bytes]:
                yield b"data: one\n\n"
                await controls.release.wait()
                yield b"data: two\n\n"
                controls.finished.set()

            return StreamingResponse(events(), media_type="text/event-stream")

        @router.get("/v1/chat/forever")
        async def forever() -> StreamingResponse:
            async def events() -> AsyncIterator[bytes]:
                try:
                    i = 0
                    while True:
                        yield f"data: {i}\n\n".encode()
                        i += 1
                        await asyncio.sleep(0.02)
                finally:
                    controls.stream_closed.set()

            return StreamingResponse(events(), media_type="text/event-stream")

        @router.get("/v1/chat/slow")
        async def slow() -> dict[str, str]:
            await asyncio.sleep(1.5)
            return {"service": name}

        @router.get("/v1/chat/big")
        async def big() -> StreamingResponse:
            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(64):
                    yield b"x" * 4096

            return StreamingResponse(chunks(), media_type="application/octet-stream")

    class Truncated:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            # promises a large body, sends a little, then the connection dies
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"200000")],
                }
            )
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise RuntimeError("upstream died mid-body")

    router.routes.append(StarletteRoute(f"{prefix}/truncated", endpoint=Truncated()))

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse(
            {
                "service": name,
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": dict(request.headers),
                "body": body.decode("latin-1"),
            },
            headers={"x-upstream": name},
        )

    router.add_api_route(
        "/{path:path}",
        echo,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    settings = ServiceSettings(log_json=True, max_body_bytes=10_000_000)
    app = create_app(
        service=name,
        settings=settings,
        routers=[router],
        use_database=False,
        use_redis=False,
    )
    return app


@dataclass
class Stack:
    upstreams: dict[str, Running]
    gateway: Running
    degraded: Running
    controls: Controls


@pytest.fixture(scope="session", params=["aiohttp"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The whole setup, once per upstream client backend the gateway can use."""
    backend: str = request.param
    controls = Controls()
    ups = {name: await serve(upstream_app(name, controls, FAKE_AUTH)) for name in SERVICES}
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
