"""Test helpers: PostgreSQL or Redis "down" as a client sees it (connection refused)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db import Database
from libs.redis import make_redis
from libs.state import AppState


def closed_port() -> int:
    """A local port with nothing listening on it (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def database_down(app: FastAPI) -> AsyncIterator[AsyncEngine]:
    """Point the running app's sessions at a PostgreSQL that refuses connections."""
    state = AppState.of_app(app)
    saved, state.db = (
        state.db,
        Database(f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/aistack"),
    )
    try:
        yield state.db.engine
    finally:
        await state.db.aclose()
        state.db = saved


@asynccontextmanager
async def redis_down(app: FastAPI) -> AsyncIterator[Redis]:
    """Point the running app's Redis client at a port that refuses connections."""
    dead = Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0")
    state = AppState.of_app(app)
    saved, state.redis = state.redis, dead
    try:
        yield dead
    finally:
        state.redis = saved
        await dead.aclose()


def assert_unavailable(resp: httpx.Response, dependency: str) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "2"
    error = resp.json()["error"]
    assert error["code"] == "service_unavailable"
    assert error["details"] == {"dependency": dependency}
    assert error["request_id"] == resp.headers["x-request-id"]


@asynccontextmanager
async def redis_hung(app: FastAPI) -> AsyncIterator[Redis]:
    """Point the running app's Redis at a server that accepts connections and never answers
    (what a stopped or overloaded Redis looks like to a client), with the platform's
    client timeouts (libs.redis.make_redis)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # the kernel completes handshakes; nothing ever reads or replies
        hung = make_redis(f"redis://127.0.0.1:{server.getsockname()[1]}/0")
        state = AppState.of_app(app)
        saved, state.redis = state.redis, hung
        try:
            yield hung
        finally:
            state.redis = saved
            await hung.aclose()
