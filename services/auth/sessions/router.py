"""Routes of sessions: sign-in and refresh (public), sign-out, devices, switching org."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.auth.core.context import ContextDep, PublicContextDep
from services.auth.sessions.schemas import LoginIn, RefreshIn, SessionList, SwitchOrgIn, TokenPair
from services.auth.sessions.service import SessionService
from services.auth.state import AuthState


async def get_public_session_service(ctx: PublicContextDep, request: Request) -> SessionService:
    return SessionService(ctx, AuthState.of(request).signing_key_cache)


async def get_session_service(ctx: ContextDep, request: Request) -> SessionService:
    return SessionService(ctx, AuthState.of(request).signing_key_cache)


PublicSessionServiceDep = Annotated[SessionService, Depends(get_public_session_service)]
SessionServiceDep = Annotated[SessionService, Depends(get_session_service)]

router = APIRouter(prefix="/v1/auth", tags=["auth"])


@router.post("/login", response_model=TokenPair, summary="Sign in with email and password")
async def login(body: LoginIn, svc: PublicSessionServiceDep) -> object:
    return await svc.login(body)


@router.post("/refresh", response_model=TokenPair, summary="Exchange a refresh token")
async def refresh(body: RefreshIn, svc: PublicSessionServiceDep) -> object:
    return await svc.refresh(body.refresh_token)


@router.post("/logout", status_code=204, summary="End this session")
async def logout(svc: SessionServiceDep) -> Response:
    await svc.logout()
    return Response(status_code=204)


@router.post("/logout-all", status_code=204, summary="End every session of this account")
async def logout_all(svc: SessionServiceDep) -> Response:
    await svc.logout_all()
    return Response(status_code=204)


@router.get("/sessions", response_model=SessionList, summary="Live sessions of this account")
async def list_sessions(svc: SessionServiceDep) -> object:
    return {"data": await svc.list_sessions()}


@router.delete("/sessions/{session_id}", status_code=204, summary="End one session")
async def end_session(session_id: uuid.UUID, svc: SessionServiceDep) -> Response:
    await svc.end_session(session_id)
    return Response(status_code=204)


@router.post(
    "/switch-org", response_model=TokenPair, summary="New tokens carrying another organization"
)
async def switch_org(body: SwitchOrgIn, svc: SessionServiceDep) -> object:
    return await svc.switch_org(body.org_id)
