"""Test helpers shared by every service's tests: app clients, principals, infrastructure."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.db import Database
from libs.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.settings import DEV_INTERNAL_SECRET
from libs.state import AppState

ALL_SCOPES = [
    "llm:use",
    "rag:read",
    "rag:write",
    "jobs:read",
    "jobs:write",
    "billing:read",
    "admin",
]


@dataclass
class Infra:
    """Where the test session's PostgreSQL and Redis live."""

    database_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None

    def stop(self) -> None:
        if self.redis:
            self.redis.stop()
        if self.postgres:
            self.postgres.stop()


def start_infra(root: Path) -> Infra:
    """Use TEST_DATABASE_URL / TEST_REDIS_URL when set, else embedded servers under ``root``."""
    db_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    pg = rd = None
    if not db_url:
        pg = EmbeddedPostgres(root / "postgres", port=free_port(), database="aistack_test").start()
        db_url = pg.url
    if not redis_url:
        rd = EmbeddedRedis(root / "redis", port=free_port()).start()
        redis_url = rd.url
    return Infra(db_url, redis_url, pg, rd)


def principal(
    *,
    org_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    roles: list[str] | None = None,
    scopes: list[str] | None = None,
    key_id: uuid.UUID | None = None,
) -> Principal:
    """A principal for tests (a user in a fresh organization by default)."""
    return Principal(
        user_id=user_id or uuid.uuid4(),
        org_id=org_id or uuid.uuid4(),
        roles=roles if roles is not None else ["owner"],
        scopes=scopes if scopes is not None else list(ALL_SCOPES),
        key_id=key_id,
    )


def auth_headers(p: Principal, secret: str = DEV_INTERNAL_SECRET) -> dict[str, str]:
    """Headers a service expects from the gateway for principal ``p``."""
    return {INTERNAL_HEADER: sign_internal_token(p, secret)}


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    """Run the app's lifespan (startup and shutdown) around a block."""
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def client_for(
    app: FastAPI, *, connection: AsyncConnection | None = None, base_url: str = "http://test"
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in-process; with ``connection``, every request's
    session joins that connection's transaction so the test can roll it all back."""
    async with running(app):
        if connection is not None:
            AppState.of_app(app).db = Database.joined(connection)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client
