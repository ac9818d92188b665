"""Requests per minute at the gateway: per API key, per user and per organization, together."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.settings import GatewaySettings
from libs.errors import RateLimited, ServiceUnavailable
from libs.identity import Principal
from libs.ratelimit import hit_many

log = logging.getLogger("aistack.gateway.ratelimit")

KEY_PREFIX = "aistack:rl:rpm"

REDIS_FAILURES = Counter(
    "aistack_gateway_rate_limit_unavailable_total",
    "Requests whose rate limit could not be checked (Redis down), by fail mode applied",
    ["mode"],
)
REFUSED = Counter(
    "aistack_gateway_rate_limited_total",
    "Requests refused by a rate limit, by the limit that refused",
    ["limit"],
)

_LOG_EVERY = 10.0


class RequestLimiter:
    """Checks a principal's request limits in one Redis round trip; applies the fail mode."""

    def __init__(self, redis: Redis, settings: GatewaySettings) -> None:
        self.redis = redis
        self.window = settings.rate_limit_window_seconds
        self.key_rpm = settings.rate_limit_key_rpm
        self.user_rpm = settings.rate_limit_user_rpm
        self.org_rpm = settings.rate_limit_org_rpm
        self.fail_closed = settings.rate_limit_fail_mode == "closed"
        self.retry_seconds = settings.rate_limit_retry_seconds
        self._down_until = 0.0
        self._logged_at = float("-inf")

    def limits_for(self, principal: Principal) -> list[tuple[str, str, int]]:
        """``(name, redis key, limit)`` of every limit that applies to ``principal``."""
        out: list[tuple[str, str, int]] = []
        if principal.key_id is not None:
            # a key spends its own budget, not its creator's
            out.append(
                ("key", f"{KEY_PREFIX}:key:{principal.key_id}", principal.rpm_limit or self.key_rpm)
            )
        elif principal.user_id is not None:
            out.append(("user", f"{KEY_PREFIX}:user:{principal.user_id}", self.user_rpm))
        if principal.org_id is not None:
            out.append(("org", f"{KEY_PREFIX}:org:{principal.org_id}", self.org_rpm))
        return out

    async def check(self, principal: Principal) -> dict[str, str]:
        """RateLimit-* headers for an allowed request; raises 429 (or 503 failing closed)."""
        limits = self.limits_for(principal)
        if not limits:
            return {}
        if time.monotonic() < self._down_until:
            return self._unavailable(None)
        try:
            result = await hit_many(
                self.redis, [(key, limit, self.window) for _, key, limit in limits]
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.retry_seconds
            return self._unavailable(exc)
        decision = result.strictest()
        headers = decision.headers()
        if not result.allowed:
            name = limits[result.decisions.index(decision)][0]
            REFUSED.labels(name).inc()
            raise RateLimited(
                f"Rate limit exceeded ({decision.limit} requests per {self.window}s per {name})",
                details={"limit": name},
                headers=headers,
            )
        return headers

    def _unavailable(self, exc: BaseException | None) -> dict[str, str]:
        mode = "closed" if self.fail_closed else "open"
        REDIS_FAILURES.labels(mode).inc()
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            # once per interval: a Redis outage must not flood the logs, the counter has all
            self._logged_at = now
            log.error(
                "rate limits unavailable (Redis: %s); failing %s",
                exc if exc is not None else "recently failed",
                mode,
            )
        if self.fail_closed:
            raise ServiceUnavailable(
                "Rate limiting is unavailable",
                code="rate_limit_unavailable",
                headers={"Retry-After": str(max(1, round(self.retry_seconds)))},
            )
        return {}
