"""The routing configuration: providers, model aliases with ordered fallback targets, prices.

Loaded once at startup from the YAML file named by ``LLM_MODELS_CONFIG``::

    providers:                      # name -> adapter kind + adapter config
      openai:
        kind: openai
        api_key_env: OPENAI_API_KEY # secrets only through env vars
        base_url: https://api.openai.com/v1
    models:                         # alias -> ordered targets (first that works answers)
      default:
        type: chat                  # chat (default) or embedding
        context_window: 128000
        price: {input: 0.15, output: 0.60}   # USD per 1M tokens
        # tokenizer: o200k_base             # optional, see services.llm.tokens.tokenizer.plan_for
        # tokenizer_margin: 1.3
        targets:
          - {provider: openai, model: gpt-4o-mini}
          - {provider: local, model: smollm2-135m-instruct, price: {input: 0, output: 0}}

A target may carry its own ``price`` (fallbacks to another vendor cost what that vendor
charges). Without a file, :func:`default_config` routes everything to the ``local`` provider.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.llm.tokens.tokenizer import LOCAL_CHAT_MODEL, EncodingName

ModelType = Literal["chat", "embedding"]

_MILLION = Decimal(1_000_000)
_COST_QUANTUM = Decimal("0.00000001")


class Price(BaseModel):
    """USD per 1M tokens."""

    model_config = ConfigDict(extra="forbid")

    input: Decimal = Field(default=Decimal(0), ge=0)
    output: Decimal = Field(default=Decimal(0), ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """Cost of one call, rounded to the usage ledger's 8 decimal places."""
        total = (self.input * prompt_tokens + self.output * completion_tokens) / _MILLION
        return total.quantize(_COST_QUANTUM)


class ProviderSpec(BaseModel):
    """One configured upstream: its adapter kind plus whatever that adapter reads."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(min_length=1)

    def adapter_config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    price: Price | None = None


class AliasSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ModelType = "chat"
    targets: list[TargetSpec] = Field(min_length=1)
    price: Price = Field(default_factory=Price)
    context_window: int | None = Field(default=None, gt=0)
    description: str | None = None
    # counting tokens to trim conversations: the encoding, and a factor for a model whose own
    # tokenizer is not that one (unset: derived from the target models, see tokenizer.plan_for)
    tokenizer: EncodingName | None = None
    tokenizer_margin: float | None = Field(default=None, gt=0, le=10)


class RoutingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: dict[str, ProviderSpec] = Field(default_factory=dict)
    models: dict[str, AliasSpec | list[TargetSpec]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _targets_name_known_providers(self) -> RoutingFile:
        for alias, spec in self.models.items():
            targets = spec if isinstance(spec, list) else spec.targets
            for target in targets:
                if target.provider not in self.providers:
                    raise ValueError(
                        f"model {alias!r} targets unknown provider {target.provider!r}"
                    )
        return self


@dataclass(frozen=True)
class Target:
    provider: str
    model: str
    price: Price


@dataclass(frozen=True)
class Alias:
    name: str
    type: ModelType
    targets: tuple[Target, ...]
    context_window: int | None = None
    description: str | None = None
    tokenizer: EncodingName | None = None
    tokenizer_margin: float | None = None


@dataclass
class RoutingConfig:
    providers: dict[str, ProviderSpec] = field(default_factory=dict)
    aliases: dict[str, Alias] = field(default_factory=dict)
    source: str = "built-in"

    def resolve(self, model: str) -> Alias | None:
        """The alias named ``model``; ``<provider>/<model>`` addresses one provider directly."""
        alias = self.aliases.get(model)
        if alias is not None:
            return alias
        provider, sep, name = model.partition("/")
        if sep and name and provider in self.providers:
            return Alias(name=model, type="chat", targets=(Target(provider, name, Price()),))
        return None


class ConfigError(Exception):
    """The routing file is missing, unreadable or invalid."""


def _build(data: RoutingFile, source: str) -> RoutingConfig:
    aliases: dict[str, Alias] = {}
    for name, spec in data.models.items():
        if isinstance(spec, list):
            spec = AliasSpec(targets=spec)
        aliases[name] = Alias(
            name=name,
            type=spec.type,
            targets=tuple(Target(t.provider, t.model, t.price or spec.price) for t in spec.targets),
            context_window=spec.context_window,
            description=spec.description,
            tokenizer=spec.tokenizer,
            tokenizer_margin=spec.tokenizer_margin,
        )
    return RoutingConfig(providers=dict(data.providers), aliases=aliases, source=source)


def parse_config(raw: Any, source: str = "<memory>") -> RoutingConfig:
    """Validate a decoded YAML document into a routing configuration."""
    try:
        return _build(RoutingFile.model_validate(raw or {}), source)
    except ValidationError as exc:
        raise ConfigError(f"invalid routing config {source}: {exc}") from exc


def load_config(path: str | os.PathLike[str]) -> RoutingConfig:
    """Read and validate the routing YAML file."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read routing config {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"routing config {p} is not valid YAML: {exc}") from exc
    return parse_config(raw, str(p))


LOCAL_EMBED_MODEL = "all-minilm-l6-v2"
LOCAL_MULTILINGUAL_MODEL = "multilingual-e5-small"


def default_config() -> RoutingConfig:
    """No file configured: the local CPU models answer, so the first chat needs no account."""
    return parse_config(
        {
            "providers": {"local": {"kind": "local"}},
            "models": {
                "default": {
                    "context_window": 2048,
                    "targets": [{"provider": "local", "model": LOCAL_CHAT_MODEL}],
                },
                "fast": {
                    "context_window": 2048,
                    "targets": [{"provider": "local", "model": LOCAL_CHAT_MODEL}],
                },
                # fast (~5 ms a query here), English; Chinese is found by rag's full-text half
                "embed": {
                    "type": "embedding",
                    "context_window": 256,
                    "targets": [{"provider": "local", "model": LOCAL_EMBED_MODEL}],
                },
                # multilingual (Chinese included; queries and passages embedded apart), about
                # four times slower per query: a store chooses it (docs/benchmarks.md)
                "embed-multilingual": {
                    "type": "embedding",
                    "context_window": 512,
                    "targets": [{"provider": "local", "model": LOCAL_MULTILINGUAL_MODEL}],
                },
            },
        },
        "built-in",
    )
