"""Five small service stand-ins for real gateways to proxy to: each says who it is and echoes
what it got (the gateway's proxy, OpenAPI merge and readiness tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route as StarletteRoute

from libs.app import create_app
from libs.errors import Conflict
from libs.settings import ServiceSettings
from tests.support.fakes.auth_fake import FakeAuth
from tests.support.servers import Running
from tests.support.stacks.rag_models import Item as RagItem

# the stack's auth upstream publishes this JWKS; the clients below carry one of its tokens
FAKE_AUTH = FakeAuth()


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
        "rag": "/v1/vector_stores",
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
