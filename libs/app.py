"""One app factory for all six apps: lifespan, middleware, errors, health, readiness, metrics.

Metrics are served by a listener of their own (``METRICS_PORT``, libs/telemetry.py), which the
lifespan starts; the public app has no ``/metrics``.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import logging
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Literal

# FastAPI enters an anyio cancel scope for each yield dependency (a request's database session,
# the gateway's first authenticated call), and anyio imports its asyncio backend on first use:
# during a request, otherwise. Imported with the app instead: where Python finds no cached
# bytecode, compiling that module (110 KB of source) mid-request left about 4 MiB of the heap
# fragmented for the life of the process (auth 110 -> 105 MiB after load, the gateway 89 -> 84)
# and delayed that request by 0.1-0.2 s.
import anyio._backends._asyncio  # noqa: F401
from fastapi import APIRouter, FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from libs.db import Database
from libs.errors import error_response, install_error_handlers
from libs.http import make_http_client
from libs.logging import configure_logging
from libs.payload import JsonGuardMiddleware
from libs.payload import describe as describe_request_limits
from libs.redis import make_redis
from libs.registry import ROUTES, SERVICES
from libs.settings import ServiceSettings
from libs.sse import describe_streams_per_event
from libs.state import AppState
from libs.telemetry import (
    BodyLimitMiddleware,
    ObservabilityMiddleware,
    setup_tracing,
    start_metrics_server,
)

log = logging.getLogger("aistack.app")

ReadyCheck = Callable[[FastAPI], Awaitable[Any]]
Resources = Callable[[FastAPI], AbstractAsyncContextManager[None]]

QUIET_PATHS = ("/health", "/ready")
_frozen = False
# allocations outnumbering frees before a collection (CPython's default is 700; see lifespan)
GC_THRESHOLD = 10_000


def _package_version() -> str:
    # pyproject.toml's version, from the installed package's metadata (uv sync and the image
    # install the project); a source tree that was never installed reads the file itself
    try:
        return importlib.metadata.version("aistack")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


# the one version every app reports: /health, and its OpenAPI document (the gateway's merged
# one included). Set in pyproject.toml; see docs/api-stability.md for what a change means.
VERSION = _package_version()


class App(FastAPI):
    """FastAPI with an optional hot route served past the framework's own layers.

    A request the hot route claims (:meth:`set_hot_route`) goes through the app's own
    middleware (observability, body limit, the gateway's headers and CORS) straight to its ASGI
    endpoint: no FastAPI/Starlette entry, no ServerErrorMiddleware, exception-telemetry or
    body-limit wrappers (FastAPI's, unused here), no router. Each of those is a coroutine
    frame, and most a wrapped ``send``, on every request: about a tenth of the CPU of a proxied
    chat. Errors are still answered in the platform's shape: the endpoint renders its own, and
    ObservabilityMiddleware (the outermost of ours) turns anything unhandled into a 500.
    Everything else takes FastAPI's usual path.
    """

    _hot_match: Callable[[Scope], bool] | None = None
    _hot_endpoint: ASGIApp | None = None
    _hot_stack: ASGIApp | None = None

    def set_hot_route(self, match: Callable[[Scope], bool], endpoint: ASGIApp) -> None:
        """Serve the HTTP requests ``match`` claims with ``endpoint`` (an ASGI app)."""
        self._hot_match = match
        self._hot_endpoint = endpoint
        self._hot_stack = None

    def _build_hot_stack(self) -> ASGIApp:
        assert self._hot_endpoint is not None
        stack = self._hot_endpoint
        for cls, args, kwargs in reversed(self.user_middleware):
            stack = cls(stack, *args, **kwargs)
        self._hot_stack = stack
        return stack

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            describe_streams_per_event(super().openapi())
            describe_request_limits(self.openapi_schema or {})
        return self.openapi_schema  # type: ignore[return-value]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self._hot_match
        if match is not None and scope["type"] == "http" and match(scope):
            scope["app"] = self  # as Starlette sets it: handlers reach app.state through it
            await (self._hot_stack or self._build_hot_stack())(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _described(service: str) -> str:
    known = SERVICES.get(service)
    return known.description if known is not None else ""


async def check_database(app: FastAPI) -> str | None:
    """Readiness: the service's Postgres answers (a lazy database: once it is in use)."""
    db = AppState.of_app(app).db
    if not db.built:
        # a lazy database nothing has needed yet; requests that do will connect
        return "not connected yet: connects on first use"
    async with db.engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")
    return None


async def check_redis(app: FastAPI) -> None:
    """Readiness: Redis answers PING."""
    await AppState.of_app(app).redis.ping()


async def run_ready_checks(
    app: FastAPI, checks: dict[str, ReadyCheck], limit_s: float = 2.0
) -> dict[str, Any]:
    """Run every readiness check concurrently; report each as ok or its error."""

    async def one(check: ReadyCheck) -> dict[str, Any]:
        try:
            detail = await asyncio.wait_for(check(app), limit_s)
            if isinstance(detail, str):
                return {"status": "ok", "detail": detail}
            return {"status": "ok"}
        except TimeoutError:
            return {"status": "error", "error": f"timed out after {limit_s}s"}
        except Exception as exc:
            return {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}

    names = list(checks)
    results = await asyncio.gather(*(one(checks[n]) for n in names))
    return dict(zip(names, results, strict=True))


def create_app(
    *,
    service: str,
    settings: ServiceSettings,
    routers: Sequence[APIRouter] = (),
    title: str | None = None,
    description: str | None = None,
    version: str = VERSION,
    use_database: bool | Literal["lazy"] = True,
    use_redis: bool = True,
    resources: Sequence[Resources] = (),
    ready_checks: dict[str, ReadyCheck] | None = None,
    openai_error_prefixes: Sequence[str] = (),
    openapi_tags: list[dict[str, Any]] | None = None,
    state: type[AppState] = AppState,
    guard_json: bool = True,
    body_limits: Mapping[str, int] | None = None,
) -> App:
    """Build a FastAPI app with the platform's conventions.

    ``resources`` are async context managers entered in the lifespan after the database,
    Redis and HTTP client exist (so they may use them) and exited in reverse order.
    ``use_database``: True builds the engine at start-up, "lazy" with the first session.
    ``description``: by default what the registry says the service does.
    ``state``: the app's :class:`AppState` class (a subclass declaring the service's own).
    ``guard_json``: refuse JSON bodies holding what no service can take (libs/payload.py);
    off for the gateway, which passes bodies on unread to the services that check them.
    ``body_limits``: path prefix -> largest body there, over ``max_body_bytes`` (the registry's
    upload routes get ``max_upload_bytes`` on their service and on the gateway).
    """
    configure_logging(service, settings.log_level, settings.log_json)
    setup_tracing(service, settings.otlp_endpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            st = AppState.of_app(app)
            # first: a port that cannot be had stops the start before anything connects
            metrics_port = settings.metrics_listen_port()
            if metrics_port is not None:
                metrics = start_metrics_server(settings.host, metrics_port)
                st.metrics_server = metrics
                # off the loop: stopping waits for the listener's poll (up to 0.5 s)
                stack.push_async_callback(asyncio.to_thread, metrics.stop)
            if use_database:
                # the engine's pool, deadlines and guard (libs/db.py:make_engine)
                db = Database(
                    settings.database_url,
                    pool_size=settings.db_pool_size,
                    application_name=service,
                    command_timeout_s=settings.db_command_timeout_seconds,
                    pool_timeout_s=settings.db_pool_timeout_seconds,
                    guard_retry_s=settings.db_guard_retry_seconds,
                )
                if use_database != "lazy":
                    db.engine  # noqa: B018  (built now: SQLAlchemy loads at start-up)
                st.db = db
                stack.push_async_callback(db.aclose)
            if use_redis:
                redis = make_redis(settings.redis_url)
                st.redis = redis
                stack.push_async_callback(redis.aclose)
            http = make_http_client(service)
            st.http = http
            stack.push_async_callback(http.aclose)
            for resource in resources:
                await stack.enter_async_context(resource(app))
            # everything built so far (modules, routes, models, clients) lives as long as the
            # process: out of the collector's sight, a full collection no longer walks it on
            # the request path (it added tens of milliseconds to unlucky requests: p99 at 16
            # concurrent chats went from ~113 to ~31 ms). Once per process: a test process
            # starts many apps, and frozen objects are never collected.
            global _frozen
            if not _frozen:
                _frozen = True
                gc.freeze()
                # the collector runs when allocations outnumber frees by the first threshold
                # (700). Requests in flight hold a few hundred objects each, all freed by
                # reference counting, so at 16 concurrent chats that count kept crossing 700:
                # the llm collected every ~12 requests (~7 % of its CPU), the gateway every
                # ~50, for no garbage. At 10,000 it collects when objects really accumulate.
                gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
            log.info("%s started", service)
            yield
            log.info("%s stopping", service)

    app = App(
        # our ObservabilityMiddleware traces and measures every request; FastAPI's native
        # telemetry would add a second span and metric set per request
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title=title or f"aistack {service}",
        description=description if description is not None else _described(service),
        version=version,
        lifespan=lifespan,
        openapi_tags=openapi_tags,
    )
    app.state = state()
    app.state.settings = settings
    app.state.service = service
    app.state.openai_error_prefixes = tuple(openai_error_prefixes)
    install_error_handlers(app)

    checks: dict[str, ReadyCheck] = {}
    if use_database:
        checks["database"] = check_database
    if use_redis:
        checks["redis"] = check_redis
    checks.update(ready_checks or {})

    ops = APIRouter(tags=["ops"])

    @ops.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service, "version": version}

    @ops.get("/ready", summary="Readiness: the dependencies answer", response_model=None)
    async def ready() -> Response | dict[str, Any]:
        results = await run_ready_checks(app, checks)
        if all(r["status"] == "ok" for r in results.values()):
            return {"status": "ready", "service": service, "checks": results}
        return error_response(
            503, "not_ready", f"{service} is not ready", {"service": service, "checks": results}
        )

    app.include_router(ops)
    for router in routers:
        app.include_router(router)

    # order matters: observability wraps everything, so 413s are counted and carry request ids;
    # the JSON guard sits inside the body limit, so a body is read whole only once its size is
    # known to be fine
    if guard_json:
        app.add_middleware(JsonGuardMiddleware)
    limits = dict(body_limits or {})
    for route in ROUTES:
        if route.uploads and service in (route.service, "gateway"):
            limits.setdefault(route.prefix, settings.max_upload_bytes)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, overrides=limits)
    app.add_middleware(ObservabilityMiddleware, service=service, quiet_paths=QUIET_PATHS)
    return app
