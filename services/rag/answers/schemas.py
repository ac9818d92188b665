"""aistack's cited answers over a vector store (``POST /v1/vector_stores/{id}/answer``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.rag.search.schemas import Filter


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000, description="the question")
    model: str | None = Field(
        default=None, min_length=1, max_length=200, description="chat model (RAG_ANSWER_MODEL)"
    )
    max_num_results: int = Field(default=5, ge=1, le=20, description="chunks given as sources")
    filters: Filter | None = Field(
        default=None, description="at most 50 filters, nested at most 5 deep (as search's)"
    )
    mode: Literal["hybrid", "vector", "fulltext"] = "hybrid"
    stream: bool = Field(default=False, description="server-sent events instead of one JSON")
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float | None = Field(default=None, ge=0, le=2)


class Citation(BaseModel):
    index: int = Field(description="the [n] the answer's text uses for this source")
    file_id: str
    filename: str
    vector_store_id: str
    score: float
    attributes: dict[str, Any] | None
    text: str


class AnswerUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AnswerObject(BaseModel):
    object: Literal["vector_store.answer"] = "vector_store.answer"
    model: str | None
    answer: str
    found: bool = Field(description="false: nothing relevant was found and no model was asked")
    citations: list[Citation]
    cited: list[int] = Field(description="the [n] markers the answer used")
    usage: AnswerUsage
