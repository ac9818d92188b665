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
FAIL_PREFIX = "aistack:rl:authfail"

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


class FailureLimiter:
    """Failed authentications per client address; past the limit the address is refused
    (429) before anything is verified, so guessing keys cannot load the auth service.

    Only failures touch Redis; the block itself is remembered in-process until it ends.
    """

    def __init__(self, redis: Redis, limit: int, window: int = 60) -> None:
        self.redis = redis
        self.limit = limit
        self.window = window
        self._blocked: dict[str, float] = {}

    def blocked(self, ip: str) -> float:
        """Seconds the address must still wait (0: not blocked)."""
        until = self._blocked.get(ip)
        if until is None:
            return 0.0
        wait = until - time.monotonic()
        if wait <= 0:
            del self._blocked[ip]
            return 0.0
        return wait

    async def record(self, ip: str) -> None:
        """Count one failure of ``ip``."""
        try:
            result = await hit_many(
                self.redis, [(f"{FAIL_PREFIX}:{ip}", self.limit, self.window)], force=True
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not count a failed authentication: %s", exc)
            return
        decision = result.decisions[0]
        if decision.remaining == 0:
            # that was the last failure allowed: block until one more would fit
            wait = max(
                decision.retry_after,
                decision.reset_seconds - (self.window - self.window / self.limit),
            )
            if len(self._blocked) > 100_000:
                self._blocked.clear()
            REFUSED.labels("auth_failures").inc()
            self._blocked[ip] = time.monotonic() + wait
