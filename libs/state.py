"""The typed application state: what an app holds for its life (``app.state``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from fastapi import FastAPI, Request
from starlette.datastructures import State

if TYPE_CHECKING:
    import httpx
    from redis.asyncio import Redis

    from libs.db import Database
    from libs.settings import ServiceSettings
    from libs.telemetry import MetricsServer


class AppState(State):
    """What an app holds for its life, typed: set by :func:`create_app` and its lifespan.

    A service with more (its own clients, caches) subclasses it, declares those attributes
    and passes the class to :func:`create_app`; code reads it with ``XState.of(request)``.
    Declare attributes without defaults: Starlette's State keeps values in a dict, and a
    class attribute would shadow what is set.
    """

    settings: ServiceSettings
    service: str
    openai_error_prefixes: tuple[str, ...]
    # present when the app has them (create_app's use_database / use_redis)
    db: Database
    redis: Redis
    http: httpx.AsyncClient
    # when the process serves its metrics (METRICS_PORT)
    metrics_server: MetricsServer

    @classmethod
    def of(cls, request: Request) -> Self:
        """The state of the app serving ``request``."""
        return cls.of_app(request.app)

    @classmethod
    def of_app(cls, app: FastAPI) -> Self:
        """The state of ``app`` (made by :func:`create_app` with this class or a subclass)."""
        state = app.state
        assert isinstance(state, cls), f"{type(state).__name__} is not a {cls.__name__}"
        return state
