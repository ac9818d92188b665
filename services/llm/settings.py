"""Settings of the llm service (env prefix ``LLM_``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, cast, get_args

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings
from services.llm.tokens.tokenizer import EncodingName


class LlmSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLM_", extra="ignore")

    service_name: ClassVar[str] = "llm"
    port: int = 8002

    models_config: str | None = Field(
        default=None,
        description="Path of the routing YAML (providers, model aliases, prices); "
        "env LLM_MODELS_CONFIG. Unset: the built-in local provider serves everything.",
    )

    # timeouts: the whole call when not streamed; first chunk and every gap when streamed
    request_timeout_s: float = 60.0
    max_request_timeout_s: float = 600.0

    # retries of one target before falling back to the next one
    retries: int = 1
    backoff_base_s: float = 0.2
    backoff_max_s: float = 2.0
    # an upstream asking to wait longer than this is skipped (next target) instead
    max_retry_after_s: float = 5.0

    # circuit breaker per provider
    breaker_failures: int = 5
    breaker_open_s: float = 30.0
    breaker_shared: bool = Field(
        default=True,
        description="share breakers with every llm process through Redis: failures counted "
        "together, opened and closed everywhere, one trial call for all (keys "
        "llm:breaker:<provider>[:failures], channel llm:breaker); off: each process learns alone",
    )

    # Redis on the request path (TPM limits, response cache, idempotency keys): the longest
    # one call may take; after one fails or times out Redis is skipped by every request until
    # a background probe (every redis_retry_s) hears from it again (libs/redis.py)
    redis_timeout_s: float = Field(default=0.25, gt=0, le=5)
    # while Redis is skipped, how often the background probe PINGs it
    redis_retry_s: float = Field(default=2.0, gt=0, le=60)

    # response cache and idempotency keys
    cache_ttl_s: int = 3600
    idempotency_ttl_s: int = 24 * 3600
    idempotency_wait_s: float = 10.0

    tokenizer_preload: str = Field(
        default="none",
        description="tokenizers loaded at start-up, before the process reports ready, "
        "comma-separated: o200k_base (~0.5 s, ~45 MiB), cl100k_base (~0.3 s, ~25 MiB), "
        "smollm2 (the local model's vocabulary, ~40 MiB); none: each loads on first use, "
        "stalling the process's other requests once",
    )

    usage_max_pending: int = Field(
        default=10_000,
        ge=0,
        description="usage events one process keeps in memory while Redis is unreachable "
        "(about 2 KiB each); beyond it they move to the llm.usage_outbox table, as they do "
        "at shutdown, and are queued to billing once Redis is back",
    )

    rag_url: str = Field(
        default="http://127.0.0.1:8003",
        description="the rag service, searched by the Responses API's file_search tool "
        "(POST /internal/search as the caller's organization)",
    )
    file_search_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=300,
        description="the longest wait for rag's answer to a file_search; beyond it the "
        "response fails with a 503 file_search_unavailable",
    )
    file_search_context_tokens: int = Field(
        default=8000,
        ge=100,
        description="at most this many tokens of a file_search's chunks go into the model's "
        "context (and never more than half the model alias's context_window)",
    )

    responses_ttl_days: int = Field(
        default=30,
        ge=1,
        description="days a stored /v1/responses answer (store, the default) is kept for "
        "GET and previous_response_id; older ones are invisible and purged by the llm worker",
    )
    responses_max_pending_writes: int = Field(
        default=256,
        ge=0,
        description="stored /v1/responses answers one process may have waiting to be written "
        "to PostgreSQL; past it, a request waits for its own write before its answer (or "
        "the stream's last event) is sent, slowing clients instead of growing memory "
        "(aistack_llm_responses_store_waits_total); 0: every request waits",
    )

    # tokens-per-minute limit of an organization (0: unlimited); keys carry their own
    org_tpm_limit: int = Field(
        default=0,
        ge=0,
        description="tokens per minute of an organization billing published no plan for "
        "(its plan's tpm applies otherwise); 0: unlimited",
    )
    budgets_enabled: bool = Field(
        default=True,
        description="reserve each call's worst-case cost against the organization's monthly "
        "budget (its plan's, published by billing) before calling the provider",
    )
    budget_fail_mode: Literal["open", "closed"] = Field(
        default="closed",
        description="Redis not answering a budget reservation: refuse the call with 503 "
        "budget_unavailable (closed: a budget never overshoots) or serve it unchecked (open)",
    )
    budget_exact_margin: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="the last part of a budget (a fraction of its limit) where every call "
        "reserves in Redis; before it, a process reserves a block (1 % of the limit) with a "
        "call and admits later calls from it without a round trip. 1: no blocks",
    )
    entitlements_ttl_seconds: float = Field(
        default=5.0,
        ge=0,
        description="how long an llm process keeps an organization's plan read from Redis",
    )
    # completion tokens reserved against the TPM limit when a request gives no max_tokens
    tpm_completion_reserve: int = 256

    @field_validator("tokenizer_preload", mode="before")
    @classmethod
    def _check_tokenizers(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        names = [n.strip() for n in value.split(",") if n.strip()]
        if not names or [n.lower() for n in names] == ["none"]:
            return "none"
        known = get_args(EncodingName)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown tokenizer {', '.join(unknown)}; known: {', '.join(known)}")
        return ",".join(dict.fromkeys(names))

    @property
    def tokenizers_to_preload(self) -> tuple[EncodingName, ...]:
        """The encodings :attr:`tokenizer_preload` names (none: empty)."""
        if self.tokenizer_preload == "none":
            return ()
        return cast("tuple[EncodingName, ...]", tuple(self.tokenizer_preload.split(",")))


def get_settings() -> LlmSettings:
    return LlmSettings()
