"""Request and response schemas of the llm service (OpenAI's wire format).

Request models validate what aistack relies on and allow every other field OpenAI defines
(``extra="allow"``); those travel to the provider untouched, which ignores what it cannot
translate.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import JsonDict

from libs.errors import BadRequest
from services.llm.prompts.schemas import PromptRef

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

# fields handled by aistack itself and never forwarded to a provider
LOCAL_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "cache",
        "timeout",
        "prompt",
        "conversation_id",
    }
)


# aistack's own fields beside OpenAI's, on every request model
CacheOption = Annotated[
    bool | None,
    Field(
        description="aistack: opt in (true) or out (false) of the response cache; "
        "by default only temperature 0 requests are cached",
    ),
]
# shorter than this no provider answers: a request asking for it is a mistake, not a 504
MIN_TIMEOUT_S = 0.1
TimeoutOption = Annotated[
    float | None,
    Field(
        ge=MIN_TIMEOUT_S,
        description="aistack: per-request timeout in seconds (at least 0.1; capped)",
    ),
]


def _both_given(*fields: str) -> JsonDict:
    """A JSON Schema: every one of ``fields`` is sent and not null."""
    return {"required": [*fields], "properties": {f: {"not": {"type": "null"}} for f in fields}}


_FUNCTION_MESSAGE: JsonDict = {"type": "object", "properties": {"role": {"const": "function"}}}
_FUNCTION_CALL_MESSAGE: JsonDict = {
    "type": "object",
    "required": ["role", "function_call"],
    "properties": {"role": {"const": "assistant"}},
}
# OpenAI's (deprecated) function_call of an assistant message, and a function's definition
_FUNCTION_CALL: JsonDict = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
}
_FUNCTION: JsonDict = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}},
}


def _message_schema(schema: JsonDict) -> None:
    schema["description"] = (
        "A message of the conversation; a `function` message (deprecated) answers an earlier "
        "assistant message's function_call"
    )
    props = schema["properties"]
    assert isinstance(props, dict)
    props["function_call"] = {"anyOf": [_FUNCTION_CALL, {"type": "null"}]}


class ChatMessage(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=_message_schema,
    )

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "default",
                    "messages": [{"role": "user", "content": "Say hello"}],
                    "temperature": 0,
                }
            ],
            "allOf": [
                # at least one message, unless a prompt is given (it supplies them)
                {
                    "anyOf": [
                        {"required": ["messages"], "properties": {"messages": {"minItems": 1}}},
                        {"required": ["prompt"], "properties": {"prompt": {"type": "object"}}},
                    ]
                },
                # the deprecated functions / function_call, as OpenAI: not beside tools /
                # tool_choice; function_call only with functions
                {"not": _both_given("functions", "tools")},
                {"not": _both_given("function_call", "tool_choice")},
                {
                    "anyOf": [
                        {"not": _both_given("function_call")},
                        _both_given("functions"),
                    ]
                },
                # a "function" message answers an assistant message's function_call
                {
                    "anyOf": [
                        {
                            "not": {
                                "required": ["messages"],
                                "properties": {"messages": {"contains": _FUNCTION_MESSAGE}},
                            }
                        },
                        {
                            "required": ["messages"],
                            "properties": {"messages": {"contains": _FUNCTION_CALL_MESSAGE}},
                        },
                    ]
                },
            ],
        },
    )

    model: str = Field(min_length=1, max_length=200, description="A model alias or provider/model")
    # aistack: declared before messages so that messages may be empty when a prompt is given
    prompt: PromptRef | None = Field(
        default=None,
        description="aistack: render a stored prompt (by name or id, label or version, "
        "variables) before the messages",
    )
    conversation_id: uuid.UUID | None = Field(
        default=None,
        description="aistack: prepend this conversation's history (trimmed to the context "
        "window) and store the reply in it",
    )
    messages: list[ChatMessage] = Field(default_factory=list, validate_default=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=16)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = Field(
        default=None,
        description="Up to 4 sequences where the model stops",
        json_schema_extra={
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                {"type": "null"},
            ]
        },
    )
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # OpenAI's deprecated forms of tools / tool_choice (services/llm/legacy/functions.py)
    functions: list[dict[str, Any]] | None = Field(
        default=None,
        description="Deprecated in favor of tools (still answered)",
        json_schema_extra={"anyOf": [{"type": "array", "items": _FUNCTION}, {"type": "null"}]},
    )
    function_call: str | dict[str, Any] | None = Field(
        default=None,
        description="Deprecated in favor of tool_choice (still answered): none, auto or "
        '{"name": ...}',
        json_schema_extra={
            "anyOf": [
                {"type": "string", "enum": ["none", "auto"]},
                {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
                {"type": "null"},
            ]
        },
    )
    response_format: dict[str, Any] | None = None
    user: str | None = None
    cache: CacheOption = None
    timeout: TimeoutOption = None

    @field_validator("messages")
    @classmethod
    def _messages_or_prompt(cls, v: list[ChatMessage], info: ValidationInfo) -> list[ChatMessage]:
        if not v and info.data.get("prompt") is None:
            raise ValueError("at least one message is required (unless a prompt is given)")
        return v

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def messages_json(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def params(self) -> dict[str, Any]:
        """Everything to forward to the provider besides model and messages."""
        data = self.model_dump(exclude_none=True, exclude=set(LOCAL_FIELDS))
        if self.stream:
            data["stream"] = True
        return data

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"model": "embed", "input": ["hello", "world"]}]},
    )

    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    input_type: Literal["query", "passage"] | None = Field(
        default=None,
        description="aistack: what the texts are, for models that embed a search query and a "
        "passage to be found differently (the local multilingual-e5-small: `query` by default); "
        "other models ignore it",
    )
    cache: CacheOption = None
    timeout: TimeoutOption = None

    def texts(self) -> list[str] | None:
        """The inputs as texts; None when given as token ids (:meth:`token_inputs`)."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(x, str) for x in self.input):
            return [str(x) for x in self.input]
        return None

    def token_inputs(self) -> list[list[int]]:
        """Token-id input as one list of ids per input (one list of ints is one input)."""
        if isinstance(self.input, str):
            return []
        ids = [x for x in self.input if isinstance(x, int)]
        if ids:
            return [ids]
        return [list(x) for x in self.input if isinstance(x, list)]

    def params(self) -> dict[str, Any]:
        return self.model_dump(
            exclude_none=True,
            exclude={"model", "input", "encoding_format", "input_type", "cache", "timeout"},
        )


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # aistack extras (ignored by OpenAI SDKs)
    type: str | None = None
    context_window: int | None = None
    targets: list[str] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def invalid_param(message: str, param: str, code: str = "invalid_request") -> BadRequest:
    """A 400 whose OpenAI error names ``param``."""
    return BadRequest(message, code=code, details=[{"field": param, "message": message}])


def translated_chat(chat: dict[str, Any], messages_param: str) -> ChatCompletionRequest:
    """Validate a chat request built from another API's request (legacy completions, the
    Responses API): a field it refuses is a 400 naming it, ``messages`` named as the caller's
    own parameter (``messages_param``)."""
    try:
        return ChatCompletionRequest.model_validate(chat)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        if field.startswith("messages"):
            field = messages_param
        raise invalid_param(f"Invalid request: {field}: {err['msg']}", field) from exc
