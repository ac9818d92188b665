"""Routes of TOTP (signed-in users)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from services.auth.core.context import ContextDep
from services.auth.totp.schemas import RecoveryCodes, TotpCodeIn, TotpDisableIn, TotpEnrollOut
from services.auth.totp.service import TotpService


async def get_totp_service(ctx: ContextDep) -> TotpService:
    return TotpService(ctx)


TotpServiceDep = Annotated[TotpService, Depends(get_totp_service)]

router = APIRouter(prefix="/v1/auth", tags=["auth"])


@router.post("/totp/enroll", response_model=TotpEnrollOut, summary="Start TOTP enrolment")
async def totp_enroll(svc: TotpServiceDep) -> object:
    return await svc.totp_enroll()


@router.post(
    "/totp/verify",
    response_model=RecoveryCodes,
    summary="Confirm TOTP with a first code; returns one-time recovery codes",
)
async def totp_verify(body: TotpCodeIn, svc: TotpServiceDep) -> object:
    return {"recovery_codes": await svc.totp_verify(body.code)}


@router.post("/totp/disable", status_code=204, summary="Turn TOTP off (password and a code)")
async def totp_disable(body: TotpDisableIn, svc: TotpServiceDep) -> Response:
    await svc.totp_disable(body.password, body.code)
    return Response(status_code=204)
