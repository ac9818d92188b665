"""Request and response schemas of the prompt store (``/v1/prompts``)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import JsonDict

PROMPT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
LABEL_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# request fields a prompt version may not carry in its params: the request decides those
RESERVED_PARAMS = frozenset(
    {"model", "messages", "stream", "stream_options", "prompt", "conversation_id"}
)
# "latest" always means the newest version; it cannot be set
RESERVED_LABELS = frozenset({"latest"})

# what the validators below check, published in the OpenAPI schema
SETTABLE_LABEL = r"^(?!latest$)[a-z0-9][a-z0-9._-]{0,63}$"
LABELS_SCHEMA: JsonDict = {"items": {"type": "string", "pattern": SETTABLE_LABEL}}
PARAMS_SCHEMA: JsonDict = {"propertyNames": {"not": {"enum": [*sorted(RESERVED_PARAMS)]}}}
# a name that uuid.UUID would read as an id (32 hex digits, hyphens anywhere) is refused
NAME_SCHEMA: JsonDict = {"pattern": r"^(?!(?:[0-9A-Fa-f]-*){32}$)[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"}


def _given(field: str, type_: str) -> JsonDict:
    """A JSON Schema: ``field`` is sent and not null."""
    return {"required": [field], "properties": {field: {"type": type_}}}


def _unique_items(schema: JsonDict) -> None:
    """The same target twice is refused (its version would appear twice)."""
    for branch in schema.get("anyOf", []):  # type: ignore[union-attr]
        if isinstance(branch, dict) and branch.get("type") == "array":
            branch["uniqueItems"] = True


def _both_given() -> JsonDict:
    """A JSON Schema: both a label and a version are sent (refused: give one)."""
    return {
        "required": ["label", "version"],
        "properties": {"label": {"type": "string"}, "version": {"type": "integer"}},
    }


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TemplateMessage(_In):
    """One message whose ``content`` is a Jinja template (sandboxed, strict variables)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(
        max_length=100_000,
        description="Jinja template, e.g. 'Hi {{ name }}' (one that does not compile: 400)",
    )
    name: str | None = Field(default=None, max_length=64)


class VariableSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["string", "number", "integer", "boolean", "array", "object"] | None = None
    description: str | None = None
    default: Any = None


class VariablesSchema(BaseModel):
    """A JSON Schema subset for the variables: property types, ``required``, ``default``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["object"] = "object"
    properties: dict[str, VariableSpec] = Field(default_factory=dict)
    required: list[str] = Field(default_factory=list)


class PromptVersionCreate(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "messages": [
                        {"role": "system", "content": "You answer as {{ persona }}."},
                        {"role": "user", "content": "Summarize: {{ text }}"},
                    ],
                    "model": "default",
                    "params": {"temperature": 0.2},
                    "commit_message": "shorter system prompt",
                    "labels": ["staging"],
                }
            ]
        },
    )

    messages: list[TemplateMessage] = Field(min_length=1, max_length=100)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Defaults for the request (temperature, max_tokens...); not model, "
        "messages, stream, stream_options, prompt nor conversation_id",
        json_schema_extra=PARAMS_SCHEMA,
    )
    variables: VariablesSchema | None = None
    commit_message: str = Field(default="", max_length=2000)
    labels: list[str] = Field(
        default_factory=list,
        max_length=10,
        description="Labels to point at the new version (not latest: it is reserved)",
        json_schema_extra=LABELS_SCHEMA,
    )

    @field_validator("params")
    @classmethod
    def _no_reserved_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) & RESERVED_PARAMS)
        if bad:
            raise ValueError(f"params may not set {', '.join(bad)}")
        return v

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: list[str]) -> list[str]:
        for name in v:
            _check_label(name)
        return list(dict.fromkeys(v))


def _check_label(name: str) -> str:
    if not re.match(LABEL_NAME, name):
        raise ValueError(f"label {name!r} must match {LABEL_NAME}")
    if name in RESERVED_LABELS:
        raise ValueError(f"label {name!r} is reserved")
    return name


class PromptCreate(_In):
    name: str = Field(
        pattern=PROMPT_NAME,
        description="Unique in the organization; not shaped like an id (a UUID)",
        json_schema_extra=NAME_SCHEMA,
    )
    description: str = Field(default="", max_length=2000)
    version: PromptVersionCreate | None = Field(
        default=None, description="Optionally create version 1 at once"
    )

    @field_validator("name")
    @classmethod
    def _not_an_id(cls, v: str) -> str:
        try:
            uuid.UUID(v)
        except ValueError:
            return v
        raise ValueError("a prompt name may not look like an id")


class PromptUpdate(_In):
    description: str = Field(max_length=2000)


class LabelTarget(_In):
    version: int = Field(ge=1)
    weight: int = Field(default=1, ge=1, le=10_000)


class LabelSet(_In):
    """Point a label at one version, or at several with weights (A/B)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"version": 3},
                {"versions": [{"version": 3, "weight": 90}, {"version": 4, "weight": 10}]},
            ],
            "oneOf": [_given("version", "integer"), _given("versions", "array")],
        },
    )

    version: int | None = Field(default=None, ge=1)
    versions: list[LabelTarget] | None = Field(
        default=None,
        min_length=1,
        max_length=10,
        description="Each version at most once",
        json_schema_extra=_unique_items,
    )

    @model_validator(mode="after")
    def _one_of(self) -> LabelSet:
        if (self.version is None) == (self.versions is None):
            raise ValueError("give either version or versions")
        if self.versions is not None:
            numbers = [t.version for t in self.versions]
            if len(set(numbers)) != len(numbers):
                raise ValueError("a version may appear once per label")
        return self

    def targets(self) -> list[LabelTarget]:
        if self.versions is not None:
            return self.versions
        assert self.version is not None
        return [LabelTarget(version=self.version, weight=1)]


class RenderRequest(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": _both_given()})

    label: str | None = Field(default=None, max_length=64)
    version: int | None = Field(default=None, ge=1)
    variables: dict[str, Any] = Field(
        default_factory=dict,
        description="Every variable the version's templates use and its variables schema "
        "requires (else 422 missing_variable / invalid_variable)",
    )
    ab_key: str | None = Field(
        default=None,
        max_length=200,
        description="Key for a sticky A/B choice (same key, same version); random when absent",
    )


class Actor(BaseModel):
    user_id: uuid.UUID | None = None
    key_id: uuid.UUID | None = None


class LabelTargetOut(BaseModel):
    version: int
    version_id: uuid.UUID
    weight: int


class PromptOut(BaseModel):
    id: uuid.UUID
    object: Literal["prompt"] = "prompt"
    name: str
    description: str
    latest_version: int
    labels: dict[str, list[LabelTargetOut]]
    created_by: Actor
    created_at: datetime
    updated_at: datetime


class PromptList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PromptOut]
    has_more: bool


class PromptVersionOut(BaseModel):
    id: uuid.UUID
    object: Literal["prompt.version"] = "prompt.version"
    prompt_id: uuid.UUID
    version: int
    messages: list[dict[str, Any]]
    model: str | None
    params: dict[str, Any]
    variables: dict[str, Any] | None
    template_variables: list[str] = Field(description="Variables the templates use")
    commit_message: str
    labels: list[str] = Field(description="Labels pointing at this version now")
    created_by: Actor
    created_at: datetime


class PromptVersionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PromptVersionOut]
    has_more: bool


class HistoryEntry(BaseModel):
    id: uuid.UUID
    action: str = Field(description="prompt.created, version.created, label.moved, label.deleted")
    label: str | None
    version_id: uuid.UUID | None
    before: Any
    after: Any
    actor: Actor
    created_at: datetime


class HistoryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[HistoryEntry]
    has_more: bool


class RenderOut(BaseModel):
    object: Literal["prompt.render"] = "prompt.render"
    prompt_id: uuid.UUID
    name: str
    version_id: uuid.UUID
    version: int
    label: str | None
    model: str | None
    params: dict[str, Any]
    messages: list[dict[str, Any]]


class PromptRef(_In):
    """``prompt`` in a chat request: which prompt to render before the request's messages."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "summarize", "label": "production", "variables": {"text": "..."}}
            ],
            # the name or the id; a label or a version, not both
            "oneOf": [_given("name", "string"), _given("id", "string")],
            "not": _both_given(),
        },
    )

    name: str | None = Field(default=None, min_length=1, max_length=200)
    id: uuid.UUID | None = None
    label: str | None = Field(default=None, max_length=64)
    version: int | None = Field(default=None, ge=1)
    variables: dict[str, Any] = Field(default_factory=dict)
    ab_key: str | None = Field(
        default=None,
        max_length=200,
        description="Sticky A/B key (e.g. a user id); by default each request draws anew",
    )

    @model_validator(mode="after")
    def _one_ref(self) -> PromptRef:
        if (self.name is None) == (self.id is None):
            raise ValueError("give the prompt's name or its id")
        if self.label is not None and self.version is not None:
            raise ValueError("give a label or a version, not both")
        return self

    @property
    def ref(self) -> str | uuid.UUID:
        return self.id if self.id is not None else str(self.name)
