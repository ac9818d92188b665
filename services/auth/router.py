"""HTTP routes of the auth service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import SessionDep
from libs.identity import Principal, PrincipalDep
from libs.redis import RedisDep
from services.auth.schemas import (
    Accepted,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyOut,
    AuditList,
    ChangePasswordIn,
    EvaluatedFlags,
    FlagIn,
    FlagKey,
    FlagList,
    FlagOut,
    ForgotIn,
    IntrospectIn,
    IntrospectOut,
    InviteCreate,
    InviteOut,
    LoginIn,
    MemberList,
    MemberOut,
    MeOut,
    OrgCreate,
    OrgList,
    OrgOut,
    RecoveryCodes,
    RefreshIn,
    RegisterIn,
    ResetIn,
    RoleChange,
    SessionList,
    SigningKeyList,
    SigningKeyOut,
    SwitchOrgIn,
    TokenIn,
    TokenPair,
    TotpCodeIn,
    TotpDisableIn,
    TotpEnrollOut,
)
from services.auth.service import OAUTH_STATE_COOKIE, AuthContext, AuthService, Client
from services.auth.settings import AuthSettings


def client_of(request: Request) -> Client:
    """The gateway appends the address it saw to X-Forwarded-For: the last entry is trusted."""
    xff = request.headers.get("x-forwarded-for", "")
    ip = xff.rsplit(",", 1)[-1].strip() if xff.strip() else None
    if not ip and request.client:
        ip = request.client.host
    return Client(
        ip=ip[:64] if ip else None, user_agent=request.headers.get("user-agent", "")[:512]
    )


def _context(
    request: Request, session: AsyncSession, redis: Redis, principal: Principal | None
) -> AuthContext:
    settings: AuthSettings = request.app.state.settings
    return AuthContext(
        session=session,
        redis=redis,
        settings=settings,
        keys=request.app.state.signing_key_cache,
        client=client_of(request),
        principal=principal,
        http=request.app.state.http,
        oauth_cache=request.app.state.oauth_cache,
    )


# coroutines: FastAPI runs a plain ``def`` dependency in anyio's thread pool, a hop to a
# worker thread and back on every request (and a thread of its own, for nothing that blocks)
async def _public(request: Request, session: SessionDep, redis: RedisDep) -> AuthService:
    """Public routes ignore any forwarded principal."""
    return AuthService(_context(request, session, redis, None))


async def _authenticated(
    request: Request, session: SessionDep, redis: RedisDep, principal: PrincipalDep
) -> AuthService:
    return AuthService(_context(request, session, redis, principal))


Public = Annotated[AuthService, Depends(_public)]
Authed = Annotated[AuthService, Depends(_authenticated)]

auth = APIRouter(prefix="/v1/auth", tags=["auth"])
orgs = APIRouter(prefix="/v1/orgs", tags=["organizations"])
keys = APIRouter(prefix="/v1/api-keys", tags=["api keys"])
admin = APIRouter(prefix="/v1/admin", tags=["admin"])
internal = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)
wellknown = APIRouter(tags=["auth"])


# ----------------------------------------------------------------------------- public


@auth.post(
    "/register",
    status_code=202,
    response_model=Accepted,
    summary="Create an account (a verification email follows)",
)
async def register(body: RegisterIn, svc: Public) -> object:
    await svc.register(body)
    return {"message": "If this email can be registered, a confirmation email is on its way."}


@auth.post("/login", response_model=TokenPair, summary="Sign in with email and password")
async def login(body: LoginIn, svc: Public) -> object:
    return await svc.login(body)


@auth.post("/refresh", response_model=TokenPair, summary="Exchange a refresh token")
async def refresh(body: RefreshIn, svc: Public) -> object:
    return await svc.refresh(body.refresh_token)


@auth.post("/verify-email", status_code=204, summary="Confirm an email address")
async def verify_email(body: TokenIn, svc: Public) -> Response:
    await svc.verify_email(body.token)
    return Response(status_code=204)


@auth.post(
    "/password/forgot", status_code=202, response_model=Accepted, summary="Email a reset link"
)
async def forgot_password(body: ForgotIn, svc: Public) -> object:
    await svc.forgot_password(body.email)
    return {"message": "If an account uses this email, a reset link is on its way."}


@auth.post("/password/reset", status_code=204, summary="Set a new password with a reset token")
async def reset_password(body: ResetIn, svc: Public) -> Response:
    await svc.reset_password(body)
    return Response(status_code=204)


@wellknown.get("/.well-known/jwks.json", summary="Public keys that verify access tokens")
async def jwks(svc: Public, response: Response) -> dict[str, object]:
    response.headers["Cache-Control"] = "public, max-age=60"
    return await svc.jwks()


# ------------------------------------------------------------------ external sign-in

ProviderName = Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9_\-]*$")]
_OAUTH_COOKIE_PATH = "/v1/auth/oauth"


@auth.get("/oauth/providers", summary="External sign-in providers configured here")
async def oauth_providers(svc: Public) -> dict[str, object]:
    return {"data": svc.oauth_providers()}


@auth.get(
    "/oauth/{provider}/authorize",
    response_model=None,
    status_code=302,
    summary="Start signing in with a provider (OIDC with PKCE, WeChat, WeCom)",
    responses={200: {"description": "with response_mode=json: the URL to open"}},
)
async def oauth_authorize(
    provider: ProviderName,
    svc: Public,
    request: Request,
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
    settings: AuthSettings = request.app.state.settings
    resp.set_cookie(
        OAUTH_STATE_COOKIE,
        state,
        max_age=settings.oauth_state_ttl,
        path=_OAUTH_COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=settings.public_url.startswith("https://"),
    )
    return resp


@auth.get(
    "/oauth/{provider}/callback",
    response_model=TokenPair,
    summary="Where the provider sends the browser back; answers with tokens",
)
async def oauth_callback(
    provider: ProviderName,
    svc: Public,
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


# ------------------------------------------------------------------------ signed in


@auth.post("/logout", status_code=204, summary="End this session")
async def logout(svc: Authed) -> Response:
    await svc.logout()
    return Response(status_code=204)


@auth.post("/logout-all", status_code=204, summary="End every session of this account")
async def logout_all(svc: Authed) -> Response:
    await svc.logout_all()
    return Response(status_code=204)


@auth.get("/me", response_model=MeOut, summary="The signed-in user and their organizations")
async def me(svc: Authed) -> object:
    return await svc.me()


@auth.post("/verify-email/resend", status_code=202, response_model=Accepted)
async def resend_verification(svc: Authed) -> object:
    await svc.resend_verification()
    return {"message": "If the address is unconfirmed, a new confirmation email is on its way."}


@auth.post(
    "/password/change",
    status_code=204,
    summary="Change the password (ends the other sessions, emails a notice)",
)
async def change_password(body: ChangePasswordIn, svc: Authed) -> Response:
    await svc.change_password(body)
    return Response(status_code=204)


@auth.get("/sessions", response_model=SessionList, summary="Live sessions of this account")
async def list_sessions(svc: Authed) -> object:
    return {"data": await svc.list_sessions()}


@auth.delete("/sessions/{session_id}", status_code=204, summary="End one session")
async def end_session(session_id: uuid.UUID, svc: Authed) -> Response:
    await svc.end_session(session_id)
    return Response(status_code=204)


@auth.post(
    "/switch-org", response_model=TokenPair, summary="New tokens carrying another organization"
)
async def switch_org(body: SwitchOrgIn, svc: Authed) -> object:
    return await svc.switch_org(body.org_id)


@auth.post("/totp/enroll", response_model=TotpEnrollOut, summary="Start TOTP enrolment")
async def totp_enroll(svc: Authed) -> object:
    return await svc.totp_enroll()


@auth.post(
    "/totp/verify",
    response_model=RecoveryCodes,
    summary="Confirm TOTP with a first code; returns one-time recovery codes",
)
async def totp_verify(body: TotpCodeIn, svc: Authed) -> object:
    return {"recovery_codes": await svc.totp_verify(body.code)}


@auth.post("/totp/disable", status_code=204, summary="Turn TOTP off (password and a code)")
async def totp_disable(body: TotpDisableIn, svc: Authed) -> Response:
    await svc.totp_disable(body.password, body.code)
    return Response(status_code=204)


@auth.get("/flags", response_model=EvaluatedFlags, summary="Feature flags of the active org")
async def my_flags(svc: Authed) -> object:
    return await svc.evaluated_flags()


# ---------------------------------------------------------------------- organizations


@orgs.get("", response_model=OrgList, summary="Organizations I belong to")
async def list_orgs(svc: Authed) -> object:
    return {"data": await svc.list_orgs()}


@orgs.post("", status_code=201, response_model=OrgOut, summary="Create an organization")
async def create_org(body: OrgCreate, svc: Authed) -> object:
    return await svc.create_org(body.name)


@orgs.post("/invites/accept", response_model=OrgOut, summary="Join an organization by invite")
async def accept_invite(body: TokenIn, svc: Authed) -> object:
    return await svc.accept_invite(body.token)


@orgs.get("/{org_id}", response_model=OrgOut, summary="One organization")
async def get_org(org_id: uuid.UUID, svc: Authed) -> object:
    return await svc.get_org(org_id)


@orgs.get("/{org_id}/members", response_model=MemberList, summary="Members")
async def list_members(
    org_id: uuid.UUID,
    svc: Authed,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> object:
    return await svc.list_members(org_id, limit, offset)


@orgs.patch("/{org_id}/members/{user_id}", response_model=MemberOut, summary="Change a role")
async def change_role(
    org_id: uuid.UUID, user_id: uuid.UUID, body: RoleChange, svc: Authed
) -> object:
    return await svc.change_role(org_id, user_id, body.role)


@orgs.delete("/{org_id}/members/{user_id}", status_code=204, summary="Remove a member (or leave)")
async def remove_member(org_id: uuid.UUID, user_id: uuid.UUID, svc: Authed) -> Response:
    await svc.remove_member(org_id, user_id)
    return Response(status_code=204)


@orgs.post(
    "/{org_id}/invites", status_code=201, response_model=InviteOut, summary="Invite by email"
)
async def invite(org_id: uuid.UUID, body: InviteCreate, svc: Authed) -> object:
    return await svc.invite(org_id, body)


@orgs.get("/{org_id}/invites", response_model=list[InviteOut], summary="Pending invites")
async def list_invites(org_id: uuid.UUID, svc: Authed) -> object:
    return await svc.list_invites(org_id)


@orgs.delete("/{org_id}/invites/{invite_id}", status_code=204, summary="Withdraw an invite")
async def revoke_invite(org_id: uuid.UUID, invite_id: uuid.UUID, svc: Authed) -> Response:
    await svc.revoke_invite(org_id, invite_id)
    return Response(status_code=204)


@orgs.get("/{org_id}/audit", response_model=AuditList, summary="Audit log (owners and admins)")
async def list_audit(
    org_id: uuid.UUID,
    svc: Authed,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> object:
    rows, has_more = await svc.list_audit(
        org_id, action=action, actor=actor, since=since, until=until, limit=limit, offset=offset
    )
    return {"data": rows, "has_more": has_more}


# --------------------------------------------------------------------------- API keys


@keys.get("", response_model=ApiKeyList, summary="API keys of the active organization")
async def list_api_keys(
    svc: Authed,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    include_revoked: bool = False,
) -> object:
    rows, has_more = await svc.list_api_keys(limit, offset, include_revoked)
    return {"data": rows, "has_more": has_more}


@keys.post(
    "",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create an API key (the full key is shown only in this answer)",
)
async def create_api_key(body: ApiKeyCreate, svc: Authed) -> object:
    key, raw = await svc.create_api_key(body)
    return {**ApiKeyOut.model_validate(key).model_dump(), "key": raw}


@keys.get("/{key_id}", response_model=ApiKeyOut, summary="One API key")
async def get_api_key(key_id: uuid.UUID, svc: Authed) -> object:
    return await svc.get_api_key(key_id)


@keys.delete("/{key_id}", status_code=204, summary="Revoke an API key")
async def revoke_api_key(key_id: uuid.UUID, svc: Authed) -> Response:
    await svc.revoke_api_key(key_id)
    return Response(status_code=204)


# ------------------------------------------------------------------------------ admin


@admin.get("/flags", response_model=FlagList, summary="Every feature flag")
async def list_flags(svc: Authed) -> object:
    return {"data": [svc.flag_out(f) for f in await svc.list_flags()]}


@admin.get("/flags/{key}", response_model=FlagOut, summary="One feature flag")
async def get_flag(key: Annotated[FlagKey, Path()], svc: Authed) -> object:
    return svc.flag_out(await svc.get_flag(key))


@admin.put("/flags/{key}", response_model=FlagOut, summary="Create or replace a feature flag")
async def put_flag(
    key: Annotated[FlagKey, Path()], body: FlagIn, svc: Authed, response: Response
) -> object:
    flag, created = await svc.put_flag(key, body)
    if created:
        response.status_code = 201
    return svc.flag_out(flag)


@admin.delete("/flags/{key}", status_code=204, summary="Delete a feature flag")
async def delete_flag(key: Annotated[FlagKey, Path()], svc: Authed) -> Response:
    await svc.delete_flag(key)
    return Response(status_code=204)


@admin.get("/signing-keys", response_model=SigningKeyList, summary="Signing keys (public data)")
async def list_signing_keys(svc: Authed) -> object:
    return {"data": await svc.list_signing_keys()}


@admin.post(
    "/signing-keys/rotate",
    status_code=201,
    response_model=SigningKeyOut,
    summary="Rotate the token signing key",
)
async def rotate_signing_key(svc: Authed) -> object:
    return await svc.rotate_signing_key()


# --------------------------------------------------------------------------- internal


@internal.post(
    "/api-keys/introspect",
    response_model=None,
    summary="Resolve an API key (gateway only)",
)
async def introspect(body: IntrospectIn, svc: Authed) -> dict[str, object]:
    """``{"active": false}`` for an unknown, revoked or expired key; else every field of
    :class:`IntrospectOut`, nulls included."""
    return IntrospectOut.model_validate(await svc.introspect(body.key)).model_dump(
        mode="json", exclude_unset=True
    )


# included by the app one by one: FastAPI keeps an included router nested, so an aggregate
# router added a level of route lookup to every request (and about 0.4 MiB)
ROUTERS = (auth, orgs, keys, admin, internal, wellknown)
