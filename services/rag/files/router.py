"""``/v1/files`` (OpenAI's Files API) and rag's internal file routes for other services."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import StreamingResponse

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.rag.files.schemas import (
    ALL_PURPOSES,
    UPLOAD_PURPOSES,
    FileDeleted,
    FileList,
    FileObject,
    UploadForm,
)
from services.rag.files.service import FileService, render
from services.rag.files.upload import MultipartUpload
from services.rag.state import RagState

router = APIRouter(prefix="/v1/files", tags=["files"])
# not routed by the gateway: the jobs service forwards the organization's principal
internal_router = APIRouter(prefix="/internal/files", tags=["internal"], include_in_schema=False)

READ = [require_scope(Scope.RAG_READ)]
WRITE = [require_scope(Scope.RAG_WRITE)]


async def get_file_service(
    request: Request, session: SessionDep, principal: PrincipalDep
) -> FileService:
    state = RagState.of(request)
    return FileService(session, principal, state.settings, state.storage, state.db, state.plans)


FileServiceDep = Annotated[FileService, Depends(get_file_service)]

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": UploadForm.model_json_schema()}},
    }
}


async def _upload(
    request: Request, service: FileService, purposes: tuple[str, ...]
) -> dict[str, object]:
    upload = MultipartUpload(request, service.settings.max_upload_bytes)
    return render(await service.upload(upload, purposes=purposes))


@router.post(
    "",
    response_model=FileObject,
    summary="Upload a file",
    description="OpenAI's createFile: multipart `file` and `purpose`, optional "
    "`expires_after[anchor]=created_at` and `expires_after[seconds]`. The file streams to "
    "storage; MAX_UPLOAD_BYTES bounds it (413), a 0-byte file is refused (400).",
    dependencies=WRITE,
    openapi_extra=_UPLOAD_DOC,
)
async def create_file(request: Request, service: FileServiceDep) -> object:
    return await _upload(request, service, UPLOAD_PURPOSES)


@router.get("", response_model=FileList, summary="List files", dependencies=READ)
async def list_files(
    service: FileServiceDep,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> object:
    return await service.list(purpose=purpose, limit=limit, order=order, after=after)


@router.get("/{file_id}", response_model=FileObject, summary="Retrieve a file", dependencies=READ)
async def retrieve_file(file_id: str, service: FileServiceDep) -> object:
    return render(await service.get(file_id))


@router.delete(
    "/{file_id}",
    response_model=FileDeleted,
    summary="Delete a file (and remove it from every vector store)",
    dependencies=WRITE,
)
async def delete_file(file_id: str, service: FileServiceDep) -> object:
    return await service.delete(file_id)


def content_disposition(filename: str) -> str:
    """An attachment header for any stored name (RFC 6266): printable ASCII in ``filename``,
    the exact name in ``filename*`` (UTF-8, percent-encoded). A control character sent raw
    would make the server fail the response; a Chinese name would arrive as ``??.md``."""
    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    exact = quote(filename, safe="")
    return f"attachment; filename=\"{ascii_name or 'file'}\"; filename*=UTF-8''{exact}"


def _download(f_and_stream: tuple[object, object]) -> StreamingResponse:
    f, stream = f_and_stream
    return StreamingResponse(
        stream,  # type: ignore[arg-type]
        media_type="application/octet-stream",
        headers={
            "content-disposition": content_disposition(str(getattr(f, "filename", "file"))),
            "content-length": str(getattr(f, "bytes", 0)),
        },
    )


@router.get(
    "/{file_id}/content",
    summary="Download a file's content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
    dependencies=READ,
)
async def file_content(file_id: str, service: FileServiceDep) -> StreamingResponse:
    return _download(await service.content(file_id))


# --- internal routes (no scope: the calling service decided; the principal names the org)


@internal_router.get("/{file_id}", response_model=FileObject)
async def internal_retrieve_file(file_id: str, service: FileServiceDep) -> object:
    return render(await service.get(file_id))


@internal_router.get("/{file_id}/content", response_class=StreamingResponse)
async def internal_file_content(file_id: str, service: FileServiceDep) -> StreamingResponse:
    return _download(await service.content(file_id))


@internal_router.post("", response_model=FileObject)
async def internal_create_file(request: Request, service: FileServiceDep) -> object:
    return await _upload(request, service, ALL_PURPOSES)
