"""Routes of accounts: sign-up, email verification and password reset (public), and the
signed-in user's profile, password and verification mail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from services.auth.accounts.schemas import (
    Accepted,
    ChangePasswordIn,
    ForgotIn,
    MeOut,
    RegisterIn,
    ResetIn,
)
from services.auth.accounts.service import AccountService
from services.auth.core.context import ContextDep, PublicContextDep
from services.auth.core.schemas import TokenIn


async def get_public_account_service(ctx: PublicContextDep) -> AccountService:
    return AccountService(ctx)


async def get_account_service(ctx: ContextDep) -> AccountService:
    return AccountService(ctx)


PublicAccountServiceDep = Annotated[AccountService, Depends(get_public_account_service)]
AccountServiceDep = Annotated[AccountService, Depends(get_account_service)]

router = APIRouter(prefix="/v1/auth", tags=["auth"])
internal = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)


@internal.get("/platform-admin", status_code=204)
async def platform_admin(svc: AccountServiceDep) -> Response:
    """204 when the forwarded principal is a platform administrator (403 otherwise): how
    other services (the jobs service's /v1/admin/queues) ask, since the principal does not
    carry it."""
    await svc.require_platform_admin()
    return Response(status_code=204)


@router.post(
    "/register",
    status_code=202,
    response_model=Accepted,
    summary="Create an account (a verification email follows)",
)
async def register(body: RegisterIn, svc: PublicAccountServiceDep) -> object:
    await svc.register(body)
    return {"message": "If this email can be registered, a confirmation email is on its way."}


@router.post("/verify-email", status_code=204, summary="Confirm an email address")
async def verify_email(body: TokenIn, svc: PublicAccountServiceDep) -> Response:
    await svc.verify_email(body.token)
    return Response(status_code=204)


@router.post(
    "/password/forgot", status_code=202, response_model=Accepted, summary="Email a reset link"
)
async def forgot_password(body: ForgotIn, svc: PublicAccountServiceDep) -> object:
    await svc.forgot_password(body.email)
    return {"message": "If an account uses this email, a reset link is on its way."}


@router.post("/password/reset", status_code=204, summary="Set a new password with a reset token")
async def reset_password(body: ResetIn, svc: PublicAccountServiceDep) -> Response:
    await svc.reset_password(body)
    return Response(status_code=204)


@router.get("/me", response_model=MeOut, summary="The signed-in user and their organizations")
async def me(svc: AccountServiceDep) -> object:
    return await svc.me()


@router.post("/verify-email/resend", status_code=202, response_model=Accepted)
async def resend_verification(svc: AccountServiceDep) -> object:
    await svc.resend_verification()
    return {"message": "If the address is unconfirmed, a new confirmation email is on its way."}


@router.post(
    "/password/change",
    status_code=204,
    summary="Change the password (ends the other sessions, emails a notice)",
)
async def change_password(body: ChangePasswordIn, svc: AccountServiceDep) -> Response:
    await svc.change_password(body)
    return Response(status_code=204)
