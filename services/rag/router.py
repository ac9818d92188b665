"""HTTP routes of the rag service."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.rag.schemas import (
    KnowledgeBaseCreate,
    KnowledgeBaseList,
    KnowledgeBaseOut,
    KnowledgeBaseUpdate,
)
from services.rag.service import KnowledgeBaseService

router = APIRouter(prefix="/v1/knowledge-bases", tags=["knowledge bases"])

READ = [require_scope(Scope.RAG_READ)]
WRITE = [require_scope(Scope.RAG_WRITE)]


async def get_knowledge_base_service(
    session: SessionDep, principal: PrincipalDep
) -> KnowledgeBaseService:
    return KnowledgeBaseService(session, principal)


KnowledgeBases = Annotated[KnowledgeBaseService, Depends(get_knowledge_base_service)]


@router.post(
    "",
    status_code=201,
    response_model=KnowledgeBaseOut,
    summary="Create a knowledge base",
    dependencies=WRITE,
)
async def create_kb(body: KnowledgeBaseCreate, svc: KnowledgeBases) -> object:
    return await svc.create(body)


@router.get("", response_model=KnowledgeBaseList, summary="List knowledge bases", dependencies=READ)
async def list_kbs(
    svc: KnowledgeBases,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> object:
    rows, has_more = await svc.list(limit, offset)
    return {"data": rows, "has_more": has_more}


@router.get(
    "/{kb_id}", response_model=KnowledgeBaseOut, summary="Get a knowledge base", dependencies=READ
)
async def get_kb(kb_id: uuid.UUID, svc: KnowledgeBases) -> object:
    return await svc.get(kb_id)


@router.patch(
    "/{kb_id}",
    response_model=KnowledgeBaseOut,
    summary="Rename or describe a knowledge base",
    dependencies=WRITE,
)
async def update_kb(kb_id: uuid.UUID, body: KnowledgeBaseUpdate, svc: KnowledgeBases) -> object:
    return await svc.update(kb_id, body)


@router.delete("/{kb_id}", status_code=204, summary="Delete a knowledge base", dependencies=WRITE)
async def delete_kb(kb_id: uuid.UUID, svc: KnowledgeBases) -> Response:
    await svc.delete(kb_id)
    return Response(status_code=204)
