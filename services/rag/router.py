"""HTTP routes of the rag service."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from libs.db import SessionDep
from libs.identity import Principal, require_scope
from services.rag.schemas import (
    KnowledgeBaseCreate,
    KnowledgeBaseList,
    KnowledgeBaseOut,
    KnowledgeBaseUpdate,
)
from services.rag.service import KnowledgeBaseService

router = APIRouter(prefix="/v1/knowledge-bases", tags=["knowledge bases"])

ReadPrincipal = Annotated[Principal, require_scope("rag:read")]
WritePrincipal = Annotated[Principal, require_scope("rag:write")]


@router.post(
    "", status_code=201, response_model=KnowledgeBaseOut, summary="Create a knowledge base"
)
async def create_kb(
    body: KnowledgeBaseCreate, session: SessionDep, principal: WritePrincipal
) -> object:
    return await KnowledgeBaseService(session, principal).create(body)


@router.get("", response_model=KnowledgeBaseList, summary="List knowledge bases")
async def list_kbs(
    session: SessionDep,
    principal: ReadPrincipal,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> object:
    rows, has_more = await KnowledgeBaseService(session, principal).list(limit, offset)
    return {"data": rows, "has_more": has_more}


@router.get("/{kb_id}", response_model=KnowledgeBaseOut, summary="Get a knowledge base")
async def get_kb(kb_id: uuid.UUID, session: SessionDep, principal: ReadPrincipal) -> object:
    return await KnowledgeBaseService(session, principal).get(kb_id)


@router.patch(
    "/{kb_id}", response_model=KnowledgeBaseOut, summary="Rename or describe a knowledge base"
)
async def update_kb(
    kb_id: uuid.UUID, body: KnowledgeBaseUpdate, session: SessionDep, principal: WritePrincipal
) -> object:
    return await KnowledgeBaseService(session, principal).update(kb_id, body)


@router.delete("/{kb_id}", status_code=204, summary="Delete a knowledge base")
async def delete_kb(kb_id: uuid.UUID, session: SessionDep, principal: WritePrincipal) -> Response:
    await KnowledgeBaseService(session, principal).delete(kb_id)
    return Response(status_code=204)
