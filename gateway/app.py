"""The gateway app: ops routes, merged OpenAPI and /docs, aggregated /ready, the proxy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route as StarletteRoute
from starlette.types import Scope

from gateway import revocations
from gateway.apikeys import ApiKeyResolver
from gateway.headers import SecurityHeadersMiddleware, docs_csp
from gateway.jwks import JWKSCache
from gateway.openapi import OpenAPICache, swagger_assets_dir
from gateway.proxy import Proxy
from gateway.ratelimit import FailureLimiter, RequestLimiter
from gateway.revocations import SessionRevocations
from gateway.routes import match_route, openai_prefixes
from gateway.security import Guard
from gateway.settings import GatewaySettings, get_settings
from gateway.state import GatewayState
from gateway.upstream import make_upstream
from libs.app import create_app, run_ready_checks
from libs.disconnect import CancelOnDisconnect, provider_call
from libs.errors import error_response
from libs.http import make_http_client
from libs.redis import guard_for

log = logging.getLogger("aistack.gateway")

TITLE = "aistack API"
DESCRIPTION = (
    "The aistack platform behind one door: accounts, organizations and API keys, an "
    "OpenAI-compatible LLM API over many providers, knowledge bases, background jobs and "
    "usage by organization."
)
CORS_REQUEST_HEADERS = [
    "authorization",
    "x-api-key",
    "content-type",
    "x-request-id",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "x-aistack-cache",
    "x-aistack-timeout",
    # what OpenAI-compatible clients send from a page: the official Node SDK
    # (dangerouslyAllowBrowser) its platform, retry and helper headers on every request and
    # the organization/project it was given; the Vercel AI SDK its user-agent suffix (asked
    # for by browsers that let a page set it). A preflight naming one not listed here fails.
    "x-stainless-arch",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-retry-count",
    "x-stainless-timeout",
    "x-stainless-helper-method",
    "x-stainless-poll-helper",
    "x-stainless-custom-poll-interval",
    "openai-organization",
    "openai-project",
    "user-agent",
]
CORS_EXPOSED_HEADERS = [
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Retry-After",
    "x-request-id",
    "x-aistack-cache",
    "x-aistack-provider",
    "x-aistack-idempotent-replay",
]
# FastAPI's own versions of these are replaced by the gateway's
_REPLACED = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


async def _service_ready(client: httpx.AsyncClient, url: str, limit_s: float) -> dict[str, Any]:
    try:
        resp = await client.get(f"{url}/ready", timeout=limit_s)
    except httpx.TimeoutException:
        return {"status": "timeout", "error": f"no answer within {limit_s}s"}
    except httpx.HTTPError as exc:
        return {"status": "unreachable", "error": type(exc).__name__}
    if resp.status_code == 200:
        return {"status": "ready"}
    result: dict[str, Any] = {"status": "not_ready", "http_status": resp.status_code}
    try:
        details = resp.json().get("error", {}).get("details")
    except ValueError:
        details = None
    if details is not None:
        result["details"] = details
    return result


def build_router(app: FastAPI, settings: GatewaySettings) -> APIRouter:
    router = APIRouter(tags=["ops"])
    urls = settings.service_urls()

    @router.get("/ready", summary="Readiness: every service is ready", response_model=None)
    async def ready() -> Response | dict[str, Any]:
        state = GatewayState.of_app(app)
        client = state.ready_client
        names = list(urls)
        checks = state.gateway_checks
        results, own_checks = await asyncio.gather(
            asyncio.gather(
                *(_service_ready(client, urls[n], settings.ready_timeout) for n in names)
            ),
            run_ready_checks(app, checks, settings.ready_timeout) if checks else _empty(),
        )
        services = dict(zip(names, results, strict=True))
        body: dict[str, Any] = {"status": "ready", "services": services}
        if own_checks:
            body["checks"] = own_checks
        down = [n for n, r in services.items() if r["status"] != "ready"]
        down += [n for n, r in own_checks.items() if r["status"] != "ok"]
        _log_readiness(app, down, services)
        if not down:
            return body
        return error_response(
            503,
            "not_ready",
            f"Not ready: {', '.join(down)}",
            {"services": services, **({"checks": own_checks} if own_checks else {})},
        )

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi() -> Response:
        state = GatewayState.of_app(app)
        doc = await state.openapi_cache.document(state.ready_client, _own_spec(app))
        return Response(doc, media_type="application/json")

    @router.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        local = GatewayState.of_app(app).swagger_local
        if local:
            page = get_swagger_ui_html(
                openapi_url="/openapi.json",
                title=f"{TITLE} - docs",
                swagger_js_url="/docs/static/swagger-ui-bundle.js",
                swagger_css_url="/docs/static/swagger-ui.css",
                swagger_favicon_url="/docs/static/favicon-32x32.png",
            )
        else:
            page = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{TITLE} - docs")
        page.headers["Content-Security-Policy"] = docs_csp(
            bytes(page.body).decode(), local_assets=local
        )
        return page

    return router


def _log_readiness(app: FastAPI, down: list[str], services: dict[str, Any]) -> None:
    """One line when readiness flips (every service ready, or some not), none per poll: probes
    and the local runner ask every few hundred milliseconds."""
    state = GatewayState.of_app(app)
    if state.was_ready is not None and state.was_ready == (not down):
        return
    state.was_ready = not down
    if not down:
        log.info("ready: every service answers /ready")
        state.ever_ready = True
        return
    why = ", ".join(f"{n} ({services[n]['status']})" if n in services else n for n in down)
    # while starting, services coming up one by one is no news; losing one later is
    level = logging.WARNING if state.ever_ready else logging.INFO
    log.log(level, "not ready: %s", why)


def _flatten(routes: Any) -> Iterator[Any]:
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _flatten(inner.routes)
        else:
            yield r


async def _empty() -> dict[str, Any]:
    return {}


def _own_spec(app: FastAPI) -> dict[str, Any]:
    state = GatewayState.of_app(app)
    spec = state.own_spec
    if spec is None:
        spec = get_openapi(
            title=TITLE,
            version=app.version,
            description=DESCRIPTION,
            routes=state.own_routes,
        )
        state.own_spec = spec
    return spec


def build_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    proxy = Proxy(settings)

    @asynccontextmanager
    async def clients(app: FastAPI) -> AsyncIterator[None]:
        proxy.upstream = make_upstream(settings)
        state = GatewayState.of_app(app)
        state.ready_client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.ready_timeout), headers={"user-agent": "aistack-gateway"}
        )
        try:
            async with identity(app):
                yield
        finally:
            await state.ready_client.aclose()
            await proxy.upstream.aclose()
            proxy.upstream = None

    @asynccontextmanager
    async def identity(app: FastAPI) -> AsyncIterator[None]:
        redis = GatewayState.of_app(app).redis if settings.use_redis else None
        auth_client = make_http_client("gateway", timeout=settings.auth_timeout, retries=1)
        api_keys = ApiKeyResolver(
            client=auth_client,
            auth_url=settings.auth_url,
            internal_secret=settings.internal_token_secret,
            redis=redis,
            local_ttl=settings.api_key_local_ttl,
            cache_ttl=settings.api_key_cache_ttl,
            negative_ttl=settings.api_key_negative_ttl,
            stale_ttl=settings.api_key_stale_seconds,
            timeout=settings.auth_timeout,
        )
        if redis is not None:
            guard_for(redis).configure(
                name="gateway",
                timeout_s=settings.redis_timeout_seconds,
                retry_s=settings.redis_retry_seconds,
            )
        sessions = (
            SessionRevocations(redis, grace=settings.session_revocation_grace_seconds)
            if redis is not None
            else None
        )
        proxy.guard = Guard(
            jwks=JWKSCache(
                settings.resolved_jwks_url(),
                auth_client,
                ttl=settings.jwks_cache_ttl,
                min_refetch_interval=settings.jwks_min_refetch_interval,
                timeout=settings.auth_timeout,
            ),
            api_keys=api_keys,
            sessions=sessions,
            limiter=(
                RequestLimiter(redis, settings)
                if redis is not None and settings.rate_limit_enabled
                else None
            ),
            failures=(
                FailureLimiter(
                    redis, settings.rate_limit_auth_failures, settings.rate_limit_window_seconds
                )
                if redis is not None and settings.rate_limit_auth_failures > 0
                else None
            ),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway_seconds,
        )
        stop = asyncio.Event()
        listener = None
        if redis is not None and sessions is not None:
            listener = asyncio.create_task(revocations.follow(redis, stop, api_keys, sessions))
        try:
            yield
        finally:
            stop.set()
            if listener is not None:
                done, _ = await asyncio.wait({listener}, timeout=2)
                if not done:
                    listener.cancel()
            proxy.guard = None
            await auth_client.aclose()

    app = create_app(
        service="gateway",
        settings=settings,
        title=TITLE,
        description=DESCRIPTION,
        use_database=False,
        use_redis=settings.use_redis,
        resources=[clients],
        state=GatewayState,
        guard_json=False,
        openai_error_prefixes=openai_prefixes(),
    )
    state = GatewayState.of_app(app)
    state.proxy = proxy
    state.gateway_checks = {}
    state.own_spec = None
    state.was_ready = None
    state.ever_ready = False
    if settings.use_redis:
        from libs.app import check_redis

        state.gateway_checks["redis"] = check_redis
    state.openapi_cache = OpenAPICache(
        settings.service_urls(), settings.openapi_cache_ttl, settings.openapi_fetch_timeout
    )
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in _REPLACED]
    router = build_router(app, settings)
    app.include_router(router)
    # ahead of the ops routes of create_app, so this /ready wins over the default one
    app.router.routes.insert(0, app.router.routes.pop())
    state.own_routes = [
        *(r for r in _flatten(app.routes) if getattr(r, "path", None) == "/health"),
        *router.routes,
    ]
    assets = swagger_assets_dir()
    state.swagger_local = assets is not None
    if assets is not None:
        app.mount("/docs/static", StaticFiles(directory=str(assets)), name="swagger-ui")
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=settings.cors_max_age,
        )
    # outermost: every answer carries them, errors and CORS preflights included
    app.add_middleware(
        SecurityHeadersMiddleware,
        behind_tls=settings.behind_tls,
        trust_forwarded_headers=settings.trust_forwarded_headers,
        hsts_max_age=settings.hsts_max_age,
    )
    # last: every path no gateway route claims goes to the proxy (which 404s unknown prefixes)
    app.router.routes.append(
        StarletteRoute("/{path:path}", endpoint=proxy, include_in_schema=False, methods=None)
    )
    # the hot route: a request under a service prefix goes from the middleware straight to
    # the proxy, past FastAPI's layers and the router (no gateway route lives under a service
    # prefix; libs/app.py)
    # a client leaving a provider call before its answer: the proxy's request to the llm is
    # cancelled, closing that connection, so the llm cancels the provider call in turn
    # (libs/disconnect.py); innermost, so the access log says 499
    app.user_middleware.append(
        Middleware(CancelOnDisconnect, service="gateway", claims=provider_call)
    )
    app.set_hot_route(_proxied, proxy)
    return app


def _proxied(scope: Scope) -> bool:
    return match_route(scope["path"]) is not None


def app() -> FastAPI:
    """Factory for ``uvicorn --factory gateway.app:app``."""
    return build_app()
