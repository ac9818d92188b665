"""Routes of external sign-in (public): the providers, the authorize redirect, the callback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from services.auth.core.context import PublicContextDep
from services.auth.oauth.schemas import ProviderName
from services.auth.oauth.service import OAUTH_STATE_COOKIE, OAuthService
from services.auth.sessions.schemas import TokenPair
from services.auth.state import AuthState


async def get_public_oauth_service(ctx: PublicContextDep, request: Request) -> OAuthService:
    state = AuthState.of(request)
    return OAuthService(ctx, state.signing_key_cache, state.http, state.oauth_cache)


PublicOAuthServiceDep = Annotated[OAuthService, Depends(get_public_oauth_service)]

router = APIRouter(prefix="/v1/auth", tags=["auth"])

_OAUTH_COOKIE_PATH = "/v1/auth/oauth"


@router.get("/oauth/providers", summary="External sign-in providers configured here")
async def oauth_providers(svc: PublicOAuthServiceDep) -> dict[str, object]:
    return {"data": svc.oauth_providers()}


@router.get(
    "/oauth/{provider}/authorize",
    response_model=None,
    status_code=302,
    summary="Start signing in with a provider (OIDC with PKCE, WeChat, WeCom)",
    responses={200: {"description": "with response_mode=json: the URL to open"}},
)
async def oauth_authorize(
    provider: ProviderName,
    svc: PublicOAuthServiceDep,
    login_hint: Annotated[str | None, Query(max_length=320)] = None,
    response_mode: Annotated[str, Query(pattern="^(redirect|json)$")] = "redirect",
) -> Response:
    """Redirects to the provider; the state is also set in an HttpOnly cookie, which the
    callback requires (a sign-in finishes only in the browser that started it)."""
    url, state = await svc.oauth_start(provider, login_hint)
    resp: Response
    if response_mode == "json":
        resp = JSONResponse({"authorization_url": url})
    else:
        resp = RedirectResponse(url, status_code=302)
    resp.set_cookie(
        OAUTH_STATE_COOKIE,
        state,
        max_age=svc.settings.oauth_state_ttl,
        path=_OAUTH_COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=svc.settings.public_url.startswith("https://"),
    )
    return resp


@router.get(
    "/oauth/{provider}/callback",
    response_model=TokenPair,
    summary="Where the provider sends the browser back; answers with tokens",
)
async def oauth_callback(
    provider: ProviderName,
    svc: PublicOAuthServiceDep,
    request: Request,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=512)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    pair = await svc.oauth_finish(
        provider,
        code=code,
        state=state,
        bound_state=request.cookies.get(OAUTH_STATE_COOKIE),
        error=error,
    )
    resp = JSONResponse(pair.model_dump(mode="json"))
    resp.delete_cookie(OAUTH_STATE_COOKIE, path=_OAUTH_COOKIE_PATH)
    return resp
