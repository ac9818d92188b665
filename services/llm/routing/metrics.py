"""Prometheus metrics of routing (names prefixed ``aistack_llm_``): failed attempts, retries,
fallbacks and breaker states."""

from __future__ import annotations

from libs.telemetry import Counter, Gauge

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
BREAKER_STATE = Gauge(
    "aistack_llm_breaker_state",
    "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
    ["provider"],
)
