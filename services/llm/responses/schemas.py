"""The request of OpenAI's Responses API (``POST /v1/responses``), as aistack accepts it.

Validated here: the fields aistack translates onto a chat completion (see
:mod:`.translate`). Input items, tools and ``text.format`` are checked while they
are translated, so each refusal names the item or tool it is about (OpenAI's ``param``).
Every other field is allowed (``extra="allow"``), as on the chat route.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Responses fields with no chat counterpart: accepted and not forwarded to the provider
RESPONSES_ONLY = frozenset(
    {
        "background",
        "context_management",
        "include",
        "prompt_cache_retention",
        "store",
        "stream_options",
        "top_logprobs",
        "truncation",
    }
)
# chat fields a Responses request must not smuggle in through its extras
NOT_FORWARDED = frozenset({"messages", "n", "max_tokens", "max_completion_tokens", "functions"})


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "default",
                    "instructions": "Answer in one sentence.",
                    "input": "Say hello",
                }
            ]
        },
    )

    model: str = Field(min_length=1, max_length=200, description="A model alias or provider/model")
    input: str | list[dict[str, Any]] | None = Field(
        default=None,
        description="A text, or input items: messages (roles user, system, developer, "
        "assistant; content as text or input_text / input_image parts), function_call and "
        "function_call_output items",
    )
    instructions: str | None = Field(
        default=None, description="A system message put before the input"
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None,
        description="Function tools ({type: function, name, parameters, ...}) and one "
        "file_search tool ({type: file_search, vector_store_ids, max_num_results, filters, "
        "ranking_options}: the stores are searched with the last user message before the "
        "model answers)",
    )
    tool_choice: str | dict[str, Any] | None = Field(
        default=None,
        description="auto, none, required, {type: function, name}, {type: file_search} or "
        "{type: allowed_tools} naming file_search: the file_search tool searches unless it is "
        "none or names another tool",
    )
    max_tool_calls: int | None = Field(
        default=None,
        ge=0,
        description="Calls to built-in tools allowed: 0 skips the file_search tool's search "
        "(aistack searches at most once per response)",
    )
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    text: dict[str, Any] | None = Field(
        default=None, description="text.format: text, json_object or json_schema"
    )
    reasoning: dict[str, Any] | None = Field(
        default=None, description="reasoning.effort is passed on as the chat reasoning_effort"
    )
    metadata: dict[str, str] | None = Field(
        default=None, description="Up to 16 pairs, echoed in the response"
    )
    user: str | None = None
    stream: bool = False
    store: bool | None = Field(
        default=None,
        description="Keep the response (default true) for GET /v1/responses/{id} and "
        "previous_response_id, for LLM_RESPONSES_TTL_DAYS; false stores nothing",
    )
    previous_response_id: str | None = Field(
        default=None,
        max_length=200,
        description="A stored response of your organization: its history (inputs and "
        "outputs, recursively; not its instructions) goes before this input",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError("at most 16 metadata pairs")
        for key, value in v.items():
            if len(key) > 64:
                raise ValueError("metadata keys are at most 64 characters")
            if len(value) > 512:
                raise ValueError("metadata values are at most 512 characters")
        return v
