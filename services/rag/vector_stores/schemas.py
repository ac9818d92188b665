"""OpenAI's vector store, vector store file and file batch objects, with aistack's additions
(extra optional fields, each documented)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

from libs.errors import BadRequest

AUTO_MAX_TOKENS = 800
AUTO_OVERLAP_TOKENS = 400
Key = Annotated[str, StringConstraints(max_length=64)]

# what _check_metadata and check_attributes accept, published (OpenAI's limits)
METADATA_SCHEMA: JsonDict = {
    "anyOf": [
        {
            "type": "object",
            "maxProperties": 16,
            "propertyNames": {"maxLength": 64},
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
        {"type": "null"},
    ]
}
ATTRIBUTES_SCHEMA: JsonDict = {
    "anyOf": [
        {
            "type": "object",
            "maxProperties": 16,
            "propertyNames": {"maxLength": 64},
            "additionalProperties": {
                "anyOf": [
                    {"type": "string", "maxLength": 512},
                    {"type": "number"},
                    {"type": "boolean"},
                ]
            },
        },
        {"type": "null"},
    ]
}
Metadata = Annotated[dict[Key, Any] | None, Field(json_schema_extra=METADATA_SCHEMA)]
Attributes = Annotated[dict[Key, Any] | None, Field(json_schema_extra=ATTRIBUTES_SCHEMA)]


class StaticChunking(BaseModel):
    # the overlap is at most half the chunk size: published as size ranges (a JSON Schema
    # cannot compare two fields), each allowing half of its smallest size
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {
                    "properties": {
                        "max_chunk_size_tokens": {"minimum": size},
                        "chunk_overlap_tokens": {"maximum": size // 2},
                    }
                }
                for size in (100, 200, 400, 800, 1600, 3200)
            ]
        },
    )

    max_chunk_size_tokens: int = Field(ge=100, le=4096)
    chunk_overlap_tokens: int = Field(
        ge=0,
        description="At most half of max_chunk_size_tokens",
        json_schema_extra={"maximum": 2048},
    )

    @model_validator(mode="after")
    def _overlap_at_most_half(self) -> StaticChunking:
        if self.chunk_overlap_tokens > self.max_chunk_size_tokens // 2:
            raise ValueError("chunk_overlap_tokens must not exceed half of max_chunk_size_tokens")
        return self


class AutoChunkingStrategy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto"]


class StaticChunkingStrategy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["static"]
    static: StaticChunking


ChunkingStrategy = Annotated[
    AutoChunkingStrategy | StaticChunkingStrategy, Field(discriminator="type")
]


def resolve_chunking(strategy: ChunkingStrategy | None) -> dict[str, int]:
    """The static parameters a strategy means (``auto``: OpenAI's 800 / 400)."""
    if isinstance(strategy, StaticChunkingStrategy):
        return strategy.static.model_dump()
    return {"max_chunk_size_tokens": AUTO_MAX_TOKENS, "chunk_overlap_tokens": AUTO_OVERLAP_TOKENS}


def _check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if len(value) > 16:
        raise ValueError("at most 16 keys")
    for k, v in value.items():
        if len(k) > 64:
            raise ValueError("keys are at most 64 characters")
        if not isinstance(v, str) or len(v) > 512:
            raise ValueError("values are strings of at most 512 characters")
    return value


def check_attributes(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's attributes: up to 16 keys (64 chars) of strings (512), numbers or booleans."""
    if value is None:
        return None
    if len(value) > 16:
        raise ValueError("at most 16 keys")
    for k, v in value.items():
        if len(k) > 64:
            raise ValueError("keys are at most 64 characters")
        if isinstance(v, str):
            if len(v) > 512:
                raise ValueError("string values are at most 512 characters")
        elif not isinstance(v, bool | int | float):
            raise ValueError("values are strings, numbers or booleans")
    return value


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


class VectorStoreCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=512)
    file_ids: list[Annotated[str, StringConstraints(max_length=200)]] | None = Field(
        default=None, max_length=500
    )
    chunking_strategy: ChunkingStrategy | None = None
    metadata: Metadata = None
    expires_after: ExpiresAfter | None = None
    embedding_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="aistack: the embedding model (an alias of the llm service) this store's "
        "chunks are embedded with; default RAG_EMBEDDING_MODEL (`embed`). Fixed for the "
        "store's life: its vectors' dimension follows it.",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_metadata(v)


class VectorStoreUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=256)
    expires_after: ExpiresAfter | None = None
    metadata: Metadata = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_metadata(v)


class FileCounts(BaseModel):
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0


class VectorStoreObject(BaseModel):
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"]
    expires_after: ExpiresAfter | None = None
    expires_at: int | None = None
    last_active_at: int | None = None
    metadata: dict[str, Any] | None = None
    description: str | None = Field(default=None, description="aistack: as given at creation")
    embedding_model: str = Field(description="aistack: the store's embedding model")


class VectorStoreList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VectorStoreObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VectorStoreDeleted(BaseModel):
    id: str
    object: Literal["vector_store.deleted"] = "vector_store.deleted"
    deleted: bool


class StoreFileCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(max_length=200)
    chunking_strategy: ChunkingStrategy | None = None
    attributes: Attributes = None

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_attributes(v)


class StoreFileUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attributes: Attributes

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_attributes(v)


class LastError(BaseModel):
    code: Literal["server_error", "unsupported_file", "invalid_file"]
    message: str


class StaticChunkingResponse(BaseModel):
    type: Literal["static"] = "static"
    static: StaticChunking


class VectorStoreFileObject(BaseModel):
    id: str
    object: Literal["vector_store.file"] = "vector_store.file"
    usage_bytes: int
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    last_error: LastError | None
    chunking_strategy: StaticChunkingResponse | None = None
    attributes: dict[str, Any] | None = None


class VectorStoreFileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VectorStoreFileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VectorStoreFileDeleted(BaseModel):
    id: str
    object: Literal["vector_store.file.deleted"] = "vector_store.file.deleted"
    deleted: bool


class ContentPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class VectorStoreFileContent(BaseModel):
    object: Literal["vector_store.file_content.page"] = "vector_store.file_content.page"
    data: list[ContentPart]
    has_more: bool
    next_page: str | None


class FileBatchCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        # exactly one of file_ids and files (else 400)
        json_schema_extra={
            "oneOf": [
                {"required": ["file_ids"], "properties": {"file_ids": {"type": "array"}}},
                {"required": ["files"], "properties": {"files": {"type": "array"}}},
            ]
        },
    )

    file_ids: list[Annotated[str, StringConstraints(max_length=200)]] | None = Field(
        default=None, min_length=1, max_length=2000
    )
    files: list[StoreFileCreate] | None = Field(default=None, min_length=1, max_length=2000)
    chunking_strategy: ChunkingStrategy | None = None
    attributes: Attributes = None

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_attributes(v)

    def entries(self) -> list[StoreFileCreate]:
        """One entry per file: ``files`` as given, or ``file_ids`` with the shared options."""
        if (self.file_ids is None) == (self.files is None):
            raise BadRequest(
                "Give exactly one of 'file_ids' or 'files'.",
                code="invalid_request",
                details=[{"field": "file_ids", "message": "exactly one of file_ids, files"}],
            )
        if self.files is not None:
            return self.files
        return [
            StoreFileCreate(
                file_id=fid, chunking_strategy=self.chunking_strategy, attributes=self.attributes
            )
            for fid in self.file_ids or []
        ]


class FileBatchObject(BaseModel):
    id: str
    object: Literal["vector_store.files_batch"] = "vector_store.files_batch"
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    file_counts: FileCounts
