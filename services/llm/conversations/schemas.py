"""Request and response schemas of conversations (``/v1/conversations``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.llm.chat.schemas import ChatMessage

MAX_METADATA_BYTES = 16_384


def _small_metadata(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if v is not None and len(orjson.dumps(v)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is limited to {MAX_METADATA_BYTES} bytes of JSON")
    return v


class ConversationCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"title": "Trip planning", "model": "default", "metadata": {"app": "web"}}]
        },
    )

    title: str = Field(default="", max_length=500)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)
    messages: list[ChatMessage] = Field(
        default_factory=list, max_length=500, description="Optional messages to start with"
    )

    _meta = field_validator("metadata")(_small_metadata)


class ConversationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=500)
    metadata: dict[str, Any] | None = None

    _meta = field_validator("metadata")(_small_metadata)

    @model_validator(mode="after")
    def _something(self) -> ConversationUpdate:
        if self.title is None and self.metadata is None:
            raise ValueError("give a title or metadata")
        return self


class MessagesAppend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=500)


class MessageOut(BaseModel):
    """A stored message: OpenAI's message fields plus where it came from."""

    model_config = ConfigDict(extra="allow")

    id: uuid.UUID
    seq: int
    role: str
    content: Any = None
    created_at: datetime
    request_id: str | None = None
    prompt_version_id: uuid.UUID | None = None
    usage: dict[str, Any] | None = None


class ConversationOut(BaseModel):
    id: uuid.UUID
    object: Literal["conversation"] = "conversation"
    title: str
    model: str | None
    metadata: dict[str, Any]
    message_count: int
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]


class ConversationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ConversationOut]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as ?cursor= to get the next page")


class MessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[MessageOut]
