"""Prometheus metrics of the llm service (names prefixed ``aistack_llm_``)."""

from __future__ import annotations

from libs.telemetry import Counter, Gauge, Histogram

TOKENS = Counter(
    "aistack_llm_tokens_total",
    "Tokens processed, by provider, provider model and kind (prompt, completion)",
    ["provider", "model", "kind"],
)
REQUESTS = Counter(
    "aistack_llm_requests_total",
    "Completion and embedding calls, by endpoint, alias and outcome (ok, error, cached, "
    "cancelled: a stream the client left)",
    ["endpoint", "alias", "status"],
)
LATENCY = Histogram(
    "aistack_llm_request_duration_seconds",
    "Upstream call time until the last token, by provider and provider model",
    ["provider", "model", "endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TTFT = Histogram(
    "aistack_llm_time_to_first_token_seconds",
    "Time from the request to the first streamed chunk, by provider and provider model",
    ["provider", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ERRORS = Counter(
    "aistack_llm_errors_total",
    "Failed upstream attempts, by provider, provider model and error code",
    ["provider", "model", "code"],
)
RETRIES = Counter("aistack_llm_retries_total", "Retries of the same target", ["provider", "model"])
FALLBACKS = Counter(
    "aistack_llm_fallbacks_total",
    "Moves from one target of an alias to the next, by alias and the provider left",
    ["alias", "provider"],
)
CACHE = Counter(
    "aistack_llm_cache_total",
    "Response cache lookups, by endpoint and result (hit, miss)",
    ["endpoint", "result"],
)
BREAKER_STATE = Gauge(
    "aistack_llm_breaker_state",
    "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
    ["provider"],
)
