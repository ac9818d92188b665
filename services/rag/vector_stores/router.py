"""``/v1/vector_stores``: OpenAI's vector stores, their files and file batches."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.rag.state import RagState
from services.rag.vector_stores.schemas import (
    FileBatchCreate,
    FileBatchObject,
    StoreFileCreate,
    StoreFileUpdate,
    VectorStoreCreate,
    VectorStoreDeleted,
    VectorStoreFileContent,
    VectorStoreFileDeleted,
    VectorStoreFileList,
    VectorStoreFileObject,
    VectorStoreList,
    VectorStoreObject,
    VectorStoreUpdate,
)
from services.rag.vector_stores.service import VectorStoreService

router = APIRouter(prefix="/v1/vector_stores", tags=["vector stores"])

READ = [require_scope(Scope.RAG_READ)]
WRITE = [require_scope(Scope.RAG_WRITE)]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=200)]
StatusFilter = Literal["in_progress", "completed", "failed", "cancelled"]


async def get_vector_store_service(
    request: Request, session: SessionDep, principal: PrincipalDep
) -> VectorStoreService:
    state = RagState.of(request)
    return VectorStoreService(session, principal, state.settings, state.redis, state.plans)


VectorStoreServiceDep = Annotated[VectorStoreService, Depends(get_vector_store_service)]


@router.post(
    "", response_model=VectorStoreObject, summary="Create a vector store", dependencies=WRITE
)
async def create_vector_store(body: VectorStoreCreate, service: VectorStoreServiceDep) -> object:
    return await service.create(body)


@router.get("", response_model=VectorStoreList, summary="List vector stores", dependencies=READ)
async def list_vector_stores(
    service: VectorStoreServiceDep,
    limit: Limit = 20,
    order: Literal["asc", "desc"] = "desc",
    after: Cursor = None,
    before: Cursor = None,
) -> object:
    return await service.list_stores(limit=limit, order=order, after=after, before=before)


@router.get(
    "/{vector_store_id}",
    response_model=VectorStoreObject,
    summary="Retrieve a vector store",
    dependencies=READ,
)
async def retrieve_vector_store(vector_store_id: str, service: VectorStoreServiceDep) -> object:
    return await service.rendered(await service.store(vector_store_id))


@router.post(
    "/{vector_store_id}",
    response_model=VectorStoreObject,
    summary="Modify a vector store",
    dependencies=WRITE,
)
async def modify_vector_store(
    vector_store_id: str, body: VectorStoreUpdate, service: VectorStoreServiceDep
) -> object:
    return await service.update(vector_store_id, body)


@router.delete(
    "/{vector_store_id}",
    response_model=VectorStoreDeleted,
    summary="Delete a vector store",
    dependencies=WRITE,
)
async def delete_vector_store(vector_store_id: str, service: VectorStoreServiceDep) -> object:
    return await service.delete(vector_store_id)


# --- files of a store


@router.post(
    "/{vector_store_id}/files",
    response_model=VectorStoreFileObject,
    summary="Attach a file to a vector store (ingested in the background)",
    dependencies=WRITE,
)
async def create_vector_store_file(
    vector_store_id: str, body: StoreFileCreate, service: VectorStoreServiceDep
) -> object:
    return await service.attach(vector_store_id, body)


@router.get(
    "/{vector_store_id}/files",
    response_model=VectorStoreFileList,
    summary="List a vector store's files",
    dependencies=READ,
)
async def list_vector_store_files(
    vector_store_id: str,
    service: VectorStoreServiceDep,
    limit: Limit = 20,
    order: Literal["asc", "desc"] = "desc",
    after: Cursor = None,
    before: Cursor = None,
    filter: StatusFilter | None = None,
) -> object:
    return await service.list_files(
        vector_store_id, limit=limit, order=order, after=after, before=before, status=filter
    )


@router.get(
    "/{vector_store_id}/files/{file_id}",
    response_model=VectorStoreFileObject,
    summary="Retrieve a vector store file",
    dependencies=READ,
)
async def retrieve_vector_store_file(
    vector_store_id: str, file_id: str, service: VectorStoreServiceDep
) -> object:
    return await service.get_file(vector_store_id, file_id)


@router.post(
    "/{vector_store_id}/files/{file_id}",
    response_model=VectorStoreFileObject,
    summary="Update a vector store file's attributes",
    dependencies=WRITE,
)
async def update_vector_store_file(
    vector_store_id: str, file_id: str, body: StoreFileUpdate, service: VectorStoreServiceDep
) -> object:
    return await service.update_file(vector_store_id, file_id, body)


@router.delete(
    "/{vector_store_id}/files/{file_id}",
    response_model=VectorStoreFileDeleted,
    summary="Remove a file from a vector store (the file itself stays)",
    dependencies=WRITE,
)
async def delete_vector_store_file(
    vector_store_id: str, file_id: str, service: VectorStoreServiceDep
) -> object:
    return await service.delete_file(vector_store_id, file_id)


@router.get(
    "/{vector_store_id}/files/{file_id}/content",
    response_model=VectorStoreFileContent,
    summary="The parsed content of a vector store file (its chunks, in order)",
    dependencies=READ,
)
async def vector_store_file_content(
    vector_store_id: str,
    file_id: str,
    service: VectorStoreServiceDep,
    page: Annotated[str | None, Query(max_length=20)] = None,
) -> object:
    return await service.file_content(vector_store_id, file_id, page)


# --- file batches


@router.post(
    "/{vector_store_id}/file_batches",
    response_model=FileBatchObject,
    summary="Attach many files at once",
    dependencies=WRITE,
)
async def create_file_batch(
    vector_store_id: str, body: FileBatchCreate, service: VectorStoreServiceDep
) -> object:
    return await service.create_batch(vector_store_id, body)


@router.get(
    "/{vector_store_id}/file_batches/{batch_id}",
    response_model=FileBatchObject,
    summary="Retrieve a file batch",
    dependencies=READ,
)
async def retrieve_file_batch(
    vector_store_id: str, batch_id: str, service: VectorStoreServiceDep
) -> object:
    return await service.get_batch(vector_store_id, batch_id)


@router.post(
    "/{vector_store_id}/file_batches/{batch_id}/cancel",
    response_model=FileBatchObject,
    summary="Cancel a file batch (its files not yet ingested)",
    dependencies=WRITE,
)
async def cancel_file_batch(
    vector_store_id: str, batch_id: str, service: VectorStoreServiceDep
) -> object:
    return await service.cancel_batch(vector_store_id, batch_id)


@router.get(
    "/{vector_store_id}/file_batches/{batch_id}/files",
    response_model=VectorStoreFileList,
    summary="List a file batch's files",
    dependencies=READ,
)
async def list_file_batch_files(
    vector_store_id: str,
    batch_id: str,
    service: VectorStoreServiceDep,
    limit: Limit = 20,
    order: Literal["asc", "desc"] = "desc",
    after: Cursor = None,
    before: Cursor = None,
    filter: StatusFilter | None = None,
) -> object:
    return await service.list_files(
        vector_store_id,
        limit=limit,
        order=order,
        after=after,
        before=before,
        status=filter,
        batch_public_id=batch_id,
    )
