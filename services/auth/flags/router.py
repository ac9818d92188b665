"""Routes of feature flags: the active organization's flags, and the admin API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from services.auth.core.context import ContextDep
from services.auth.flags.schemas import EvaluatedFlags, FlagIn, FlagKey, FlagList, FlagOut
from services.auth.flags.service import FlagService


async def get_flag_service(ctx: ContextDep) -> FlagService:
    return FlagService(ctx)


FlagServiceDep = Annotated[FlagService, Depends(get_flag_service)]

router = APIRouter(prefix="/v1/auth", tags=["auth"])
admin = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/flags", response_model=EvaluatedFlags, summary="Feature flags of the active org")
async def my_flags(svc: FlagServiceDep) -> object:
    return await svc.evaluated_flags()


@admin.get("/flags", response_model=FlagList, summary="Every feature flag")
async def list_flags(svc: FlagServiceDep) -> object:
    return {"data": [svc.flag_out(f) for f in await svc.list_flags()]}


@admin.get("/flags/{key}", response_model=FlagOut, summary="One feature flag")
async def get_flag(key: Annotated[FlagKey, Path()], svc: FlagServiceDep) -> object:
    return svc.flag_out(await svc.get_flag(key))


@admin.put("/flags/{key}", response_model=FlagOut, summary="Create or replace a feature flag")
async def put_flag(
    key: Annotated[FlagKey, Path()], body: FlagIn, svc: FlagServiceDep, response: Response
) -> object:
    flag, created = await svc.put_flag(key, body)
    if created:
        response.status_code = 201
    return svc.flag_out(flag)


@admin.delete("/flags/{key}", status_code=204, summary="Delete a feature flag")
async def delete_flag(key: Annotated[FlagKey, Path()], svc: FlagServiceDep) -> Response:
    await svc.delete_flag(key)
    return Response(status_code=204)
