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
from services.auth.accounts import router as accounts
from services.auth.api_keys import router as api_keys
from services.auth.audit import router as audit
from services.auth.flags import router as flags
from services.auth.flags.service import publish_flag_definitions
from services.auth.oauth import router as oauth
from services.auth.orgs import router as orgs
from services.auth.sessions import router as sessions
from services.auth.sessions.revocations import replay_forever
from services.auth.settings import AuthSettings, get_settings
from services.auth.state import AuthState
from services.auth.tokens import router as tokens
from services.auth.tokens.keys import KeyCache
from services.auth.totp import router as totp

log = logging.getLogger("aistack.auth")


@asynccontextmanager
async def flag_definitions(app: FastAPI) -> AsyncIterator[None]:
    """Other services evaluate flags from Redis: make sure the definitions are there."""
    try:
        state = AuthState.of_app(app)
        async with session_scope(state.db) as session:
            count = await publish_flag_definitions(session, state.redis)
        log.info("published %d feature flag definitions", count)
    except Exception:
        # auth still serves; the definitions are rewritten on the next change or start
        log.error("could not publish the feature flag definitions", exc_info=True)
    yield


@asynccontextmanager
async def revocation_replay(app: FastAPI) -> AsyncIterator[None]:
    """Announce session revocations that Redis missed (services/auth/sessions/revocations.py)."""
    # the database the app started with (tests give requests a test transaction afterwards)
    state = AuthState.of_app(app)
    task = asyncio.create_task(replay_forever(state.db, state.redis))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# included by the app one by one: FastAPI keeps an included router nested, so an aggregate
# router added a level of route lookup to every request (and about 0.4 MiB)
ROUTERS = (
    accounts.router,
    sessions.router,
    oauth.router,
    totp.router,
    flags.router,
    orgs.router,
    audit.router,
    api_keys.router,
    flags.admin,
    tokens.admin,
    api_keys.internal,
    accounts.internal,
    orgs.internal,
    tokens.wellknown,
)


def build_app(settings: AuthSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = create_app(
        service="auth",
        settings=settings,
        routers=ROUTERS,
        resources=[flag_definitions, revocation_replay],
        title="aistack auth",
        state=AuthState,
    )
    state = AuthState.of_app(app)
    state.signing_key_cache = KeyCache(settings.signing_key_cache_seconds)
    state.oauth_cache = {}
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.auth.app:app``."""
    return build_app()
