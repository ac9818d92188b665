"""Routes of API keys (the active organization's), and the gateway's introspection."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from services.auth.api_keys.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyOut,
    ApiKeyUpdate,
    IntrospectIn,
    IntrospectOut,
)
from services.auth.api_keys.service import ApiKeyService
from services.auth.core.context import ContextDep


async def get_api_key_service(ctx: ContextDep) -> ApiKeyService:
    return ApiKeyService(ctx)


ApiKeyServiceDep = Annotated[ApiKeyService, Depends(get_api_key_service)]

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])
internal = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)


@router.get("", response_model=ApiKeyList, summary="API keys of the active organization")
async def list_api_keys(
    svc: ApiKeyServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    include_revoked: bool = False,
) -> object:
    rows, has_more = await svc.list_api_keys(limit, offset, include_revoked)
    return {"data": rows, "has_more": has_more}


@router.post(
    "",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create an API key (the full key is shown only in this answer)",
)
async def create_api_key(body: ApiKeyCreate, svc: ApiKeyServiceDep) -> object:
    key, raw = await svc.create_api_key(body)
    return {**ApiKeyOut.model_validate(key).model_dump(), "key": raw}


@router.get("/{key_id}", response_model=ApiKeyOut, summary="One API key")
async def get_api_key(key_id: uuid.UUID, svc: ApiKeyServiceDep) -> object:
    return await svc.get_api_key(key_id)


@router.patch(
    "/{key_id}",
    response_model=ApiKeyOut,
    summary="Change an API key's name or limits (its monthly budget among them)",
)
async def update_api_key(key_id: uuid.UUID, body: ApiKeyUpdate, svc: ApiKeyServiceDep) -> object:
    return await svc.update_api_key(key_id, body)


@router.delete("/{key_id}", status_code=204, summary="Revoke an API key")
async def revoke_api_key(key_id: uuid.UUID, svc: ApiKeyServiceDep) -> Response:
    await svc.revoke_api_key(key_id)
    return Response(status_code=204)


@internal.post(
    "/api-keys/introspect",
    response_model=None,
    summary="Resolve an API key (gateway only)",
)
async def introspect(body: IntrospectIn, svc: ApiKeyServiceDep) -> dict[str, object]:
    """``{"active": false}`` for an unknown, revoked or expired key; else every field of
    :class:`IntrospectOut`, nulls included."""
    return IntrospectOut.model_validate(await svc.introspect(body.key)).model_dump(
        mode="json", exclude_unset=True
    )
