"""Routes of the access tokens: the JWKS, and the signing keys for platform admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.auth.core.context import ContextDep, PublicContextDep
from services.auth.state import AuthState
from services.auth.tokens.schemas import SigningKeyList, SigningKeyOut
from services.auth.tokens.service import TokenService


async def get_public_token_service(ctx: PublicContextDep, request: Request) -> TokenService:
    return TokenService(ctx, AuthState.of(request).signing_key_cache)


async def get_token_service(ctx: ContextDep, request: Request) -> TokenService:
    return TokenService(ctx, AuthState.of(request).signing_key_cache)


PublicTokenServiceDep = Annotated[TokenService, Depends(get_public_token_service)]
TokenServiceDep = Annotated[TokenService, Depends(get_token_service)]

admin = APIRouter(prefix="/v1/admin", tags=["admin"])
wellknown = APIRouter(tags=["auth"])


@admin.get("/signing-keys", response_model=SigningKeyList, summary="Signing keys (public data)")
async def list_signing_keys(svc: TokenServiceDep) -> object:
    return {"data": await svc.list_signing_keys()}


@admin.post(
    "/signing-keys/rotate",
    status_code=201,
    response_model=SigningKeyOut,
    summary="Rotate the token signing key",
)
async def rotate_signing_key(svc: TokenServiceDep) -> object:
    return await svc.rotate_signing_key()


@wellknown.get("/.well-known/jwks.json", summary="Public keys that verify access tokens")
async def jwks(svc: PublicTokenServiceDep, response: Response) -> dict[str, object]:
    response.headers["Cache-Control"] = "public, max-age=60"
    return await svc.jwks()
