"""The auth service: accounts, organizations, sessions, api keys and tokens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from libs.app import create_app
from libs.db import session_scope
from services.auth.revocations import replay_forever
from services.auth.router import ROUTERS
from services.auth.service import publish_flag_definitions
from services.auth.settings import AuthSettings, get_settings
from services.auth.tokens import KeyCache

log = logging.getLogger("aistack.auth")


@asynccontextmanager
async def flag_definitions(app: FastAPI) -> AsyncIterator[None]:
    """Other services evaluate flags from Redis: make sure the definitions are there."""
    try:
        async with session_scope(app.state.db) as session:
            count = await publish_flag_definitions(session, app.state.redis)
        log.info("published %d feature flag definitions", count)
    except Exception:
        # auth still serves; the definitions are rewritten on the next change or start
        log.error("could not publish the feature flag definitions", exc_info=True)
    yield


@asynccontextmanager
async def revocation_replay(app: FastAPI) -> AsyncIterator[None]:
    """Announce session revocations that Redis missed (services/auth/revocations.py)."""
    # the process's own database (tests swap the request sessions' factory afterwards)
    task = asyncio.create_task(replay_forever(app.state.db, app.state.redis))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def build_app(settings: AuthSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = create_app(
        service="auth",
        settings=settings,
        routers=ROUTERS,
        resources=[flag_definitions, revocation_replay],
        title="aistack auth",
        description="Accounts, organizations, sessions, API keys and tokens.",
    )
    app.state.signing_key_cache = KeyCache(settings.signing_key_cache_seconds)
    # identity providers' discovery documents and keys, WeCom access tokens
    app.state.oauth_cache = {}
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.auth.app:app``."""
    return build_app()
