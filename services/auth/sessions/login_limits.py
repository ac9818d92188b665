"""Failed sign-ins are limited per account and per client address (fixed windows)."""

from __future__ import annotations

import math

from redis.asyncio import Redis

from libs.errors import RateLimited
from libs.ratelimit import hit_many
from services.auth.core.security import sha256_hex
from services.auth.settings import AuthSettings

_LOGIN_FAIL = "aistack:auth:login-fail:"

Limits = list[tuple[str, int, float]]


def account_key(email: str | None) -> str:
    """The account's counter (a good sign-in or a password reset clears it)."""
    return f"{_LOGIN_FAIL}acct:{sha256_hex(email or '')}"


def login_limits(settings: AuthSettings, email: str | None, ip: str | None) -> Limits:
    """The account's limit first, then the address's (when known)."""
    window = float(settings.login_failure_window)
    limits = [(account_key(email), settings.login_failures_per_account, window)]
    if ip:
        limits.append((f"{_LOGIN_FAIL}ip:{ip}", settings.login_failures_per_ip, window))
    return limits


async def check_login_limits(redis: Redis, limits: Limits) -> None:
    # cost 0 only reads; a limit with no room left refuses before any password check
    result = await hit_many(redis, limits, cost=0)
    waits = []
    for (_key, limit, window), d in zip(limits, result.decisions, strict=True):
        if d.remaining <= 0:
            waits.append(d.reset_seconds - window + window / limit)
    if waits:
        retry = max(1, math.ceil(max(waits)))
        raise RateLimited(
            "Too many failed sign-in attempts; try again later",
            code="too_many_attempts",
            headers={"Retry-After": str(retry)},
            details={"retry_after": retry},
        )


async def count_failure(redis: Redis, limits: Limits) -> None:
    await hit_many(redis, limits, cost=1, force=True)
