"""Calling an alias's targets: retries with backoff, fallback, circuit breakers, timeouts.

For each target in order: skip it while its provider's breaker is open; call it with the
per-request timeout; on a retryable failure (429, 5xx, timeout, connection) retry the same
target with exponential backoff (honouring a short ``Retry-After``), then fall back to the
next target. Request errors the upstream blames on the request (400, 413, 422) go straight
back to the client: another model would refuse them too. For streams the same happens until
the first chunk arrives; after that the client has bytes and nothing is retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from libs.errors import (
    AppError,
    BadGateway,
    BadRequest,
    GatewayTimeout,
    RateLimited,
    ServiceUnavailable,
)
from services.llm.providers.base import Provider, ProviderError
from services.llm.routing.breaker import CircuitBreaker
from services.llm.routing.config import Alias, Target
from services.llm.routing.metrics import ERRORS, FALLBACKS, RETRIES
from services.llm.settings import LlmSettings

log = logging.getLogger("aistack.llm.dispatch")

T = TypeVar("T")

# statuses where the upstream blames the request itself: no retry, no fallback
CLIENT_ERROR_STATUSES = frozenset({400, 413, 422})
# failures that say nothing about the provider's health (quota, client mistakes)
_NOT_HEALTH = frozenset({400, 404, 413, 422, 429})


@dataclass
class Outcome:
    """Which target answered, after how many fallbacks, and the last error seen."""

    target: Target | None = None
    fallbacks: int = 0
    attempts: int = 0
    last_error: ProviderError | None = None
    tried: list[str] = field(default_factory=list)


def classify(exc: BaseException, provider: str) -> ProviderError:
    """Any failure of an attempt as a :class:`ProviderError`."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, TimeoutError):
        return ProviderError(
            f"provider {provider} timed out",
            status=504,
            retryable=True,
            provider=provider,
            code="timeout",
        )
    return ProviderError(
        f"provider {provider} failed: {type(exc).__name__}",
        status=502,
        retryable=True,
        provider=provider,
        code="upstream_error",
    )


def _retry_after(err: ProviderError) -> dict[str, str] | None:
    if err.retry_after is None:
        return None
    return {"Retry-After": str(max(1, round(err.retry_after)))}


def to_app_error(err: ProviderError | None, outcome: Outcome) -> AppError:
    """The error the client sees once every target failed."""
    details = {"tried": outcome.tried} if outcome.tried else None
    if err is not None and len(outcome.tried) > 1:
        # every attempt's failure, not only the last one's: the first target's may be the one
        # to fix (a missing key) while the last is a fallback that was never meant to answer
        err = err.with_message(f"every attempt failed: {'; '.join(outcome.tried)}")
    if err is None:
        return ServiceUnavailable(
            "No provider is available for this model right now (circuit open)",
            code="providers_unavailable",
            details=details,
        )
    if err.status in CLIENT_ERROR_STATUSES:
        return BadRequest(err.message, code=err.code or "invalid_request", details=details)
    if err.status == 429:
        return RateLimited(
            f"Upstream rate limit: {err.message}",
            code="upstream_rate_limited",
            details=details,
            headers=_retry_after(err),
        )
    if err.code == "timeout" or err.status == 504:
        return GatewayTimeout(err.message, code="upstream_timeout", details=details)
    if err.status == 503:
        # overloaded, not broken (Anthropic's 529, a busy local model): worth retrying later
        return ServiceUnavailable(
            err.message,
            code=err.code or "upstream_unavailable",
            details=details,
            headers=_retry_after(err),
        )
    return BadGateway(err.message, code=err.code or "upstream_error", details=details)


class Dispatcher:
    def __init__(self, providers: dict[str, Provider], settings: LlmSettings) -> None:
        self.providers = providers
        self.settings = settings
        self.breakers = {
            name: CircuitBreaker(
                name, failures=settings.breaker_failures, open_s=settings.breaker_open_s
            )
            for name in providers
        }

    def _backoff(self, attempt: int, err: ProviderError) -> float | None:
        """Seconds before retrying the same target, or None to move to the next one."""
        if err.retry_after is not None and err.retry_after > self.settings.max_retry_after_s:
            return None
        delay = min(self.settings.backoff_max_s, self.settings.backoff_base_s * (2**attempt))
        delay *= 0.5 + random.random() / 2
        if err.retry_after is not None:
            delay = max(delay, err.retry_after)
        return delay

    async def run(
        self,
        alias: Alias,
        call: Callable[[Provider, Target], Awaitable[T]],
        timeout_s: float,
        outcome: Outcome,
    ) -> T:
        """Call ``alias``'s targets until one answers; raise the client-facing error if none."""
        for index, target in enumerate(alias.targets):
            if index > 0 and outcome.tried:
                FALLBACKS.labels(alias.name, alias.targets[index - 1].provider).inc()
                outcome.fallbacks += 1
            provider = self.providers.get(target.provider)
            breaker = self.breakers.get(target.provider)
            if provider is None or breaker is None:
                continue
            attempt = 0
            while True:
                if not breaker.allow():
                    outcome.tried.append(f"{target.provider}/{target.model}: circuit open")
                    break
                outcome.attempts += 1
                try:
                    async with asyncio.timeout(timeout_s):
                        result = await call(provider, target)
                except asyncio.CancelledError:
                    breaker.release()
                    raise
                except Exception as exc:
                    err = classify(exc, target.provider)
                    if not isinstance(exc, ProviderError | TimeoutError):
                        log.warning("provider %s failed", target.provider, exc_info=exc)
                    outcome.last_error = err
                    outcome.tried.append(
                        f"{target.provider}/{target.model}: {err.status} {err.message[:200]}"
                    )
                    ERRORS.labels(target.provider, target.model, err.code or str(err.status)).inc()
                    if err.status in _NOT_HEALTH:
                        breaker.release()
                    else:
                        breaker.record_failure()
                    if err.status in CLIENT_ERROR_STATUSES and not err.retryable:
                        raise to_app_error(err, outcome) from exc
                    if not err.retryable or attempt >= self.settings.retries:
                        break
                    delay = self._backoff(attempt, err)
                    if delay is None:
                        break
                    attempt += 1
                    RETRIES.labels(target.provider, target.model).inc()
                    await asyncio.sleep(delay)
                    continue
                breaker.record_success()
                outcome.target = target
                return result
        raise to_app_error(outcome.last_error, outcome)


async def first_chunk(
    stream: AsyncIterator[dict[str, Any]],
) -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
    """Pull the first chunk of a stream (None if it ended empty), keeping the iterator."""
    try:
        chunk = await anext(stream)
    except StopAsyncIteration:
        return None, stream
    except BaseException:
        await close_stream(stream)
        raise
    return chunk, stream


async def close_stream(stream: AsyncIterator[Any]) -> None:
    """Close an upstream stream (its HTTP response) if it is an async generator."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing an upstream stream failed", exc_info=True)
