"""The auth service: accounts, organizations, sessions, api keys and tokens."""

from __future__ import annotations

from fastapi import FastAPI

from libs.app import create_app
from services.auth.router import router
from services.auth.settings import AuthSettings, get_settings
from services.auth.tokens import KeyCache


def build_app(settings: AuthSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = create_app(
        service="auth",
        settings=settings,
        routers=[router],
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
