"""Request schema of ``POST /v1/completions`` (OpenAI's legacy Completions API)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.llm.chat.schemas import CacheOption, StreamOptions, TimeoutOption


class CompletionRequest(BaseModel):
    """``POST /v1/completions``."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"model": "default", "prompt": "Say hello", "max_tokens": 32}]
        },
    )

    model: str = Field(min_length=1, max_length=200, description="A model alias or provider/model")
    prompt: str | list[str] | list[int] | list[list[int]] | None = Field(
        default=None,
        description="A text or a list of texts (one chat call each; token-id prompts are "
        "refused). The model answers it as a user message.",
    )
    max_tokens: int | None = Field(
        default=16, ge=1, description="Most tokens per choice (default 16; null: no limit)"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=16)
    best_of: int | None = Field(default=None, ge=1, le=16, description="Must equal n")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    echo: bool | None = Field(default=None, description="Put the prompt before the text")
    suffix: str | None = Field(default=None, description="Not supported (400)")
    logprobs: int | None = Field(default=None, ge=0, le=5, description="Not supported (400)")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None
    cache: CacheOption = None
    timeout: TimeoutOption = None
