"""OpenAI's file objects (``/v1/files``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

# what POST /v1/files accepts (OpenAI's CreateFileRequest); the *_output purposes are written
# by aistack itself (the jobs service's batch results through POST /internal/files)
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
ALL_PURPOSES = (*UPLOAD_PURPOSES, "assistants_output", "batch_output", "fine-tune-results")
EXPIRES_MIN_S = 3600
EXPIRES_MAX_S = 2_592_000


class FileObject(BaseModel):
    """OpenAI's ``OpenAIFile``."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class UploadForm(BaseModel):
    """The multipart form of ``POST /v1/files`` (documentation: the route reads the body as a
    stream, the file straight into storage)."""

    file: bytes
    purpose: Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
    expires_after_anchor: Literal["created_at"] | None = None
    expires_after_seconds: int | None = None
