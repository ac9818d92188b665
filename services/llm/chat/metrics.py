"""Prometheus metrics of the llm calls (names prefixed ``aistack_llm_``)."""

from __future__ import annotations

from libs.telemetry import Counter, Histogram

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
CACHE = Counter(
    "aistack_llm_cache_total",
    "Response cache lookups, by endpoint and result (hit, miss)",
    ["endpoint", "result"],
)
