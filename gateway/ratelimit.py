"""Requests per minute at the gateway: per API key, per user and per organization, together.

Every limit lives in Redis (GCRA, :mod:`libs.ratelimit`), so all gateway processes enforce one
global limit. A busy principal does not cost a Redis round trip per request: a process takes a
small *lease* of units at once (counted in Redis when taken) and spends it locally for up to
``LEASE_SECONDS``. A lease starts at one unit, doubles while it is used up within its time,
shrinks to what was used when it expires, and never exceeds ``rate_limit_lease_fraction`` of
the smallest limit involved (1 % by default: 6 of the default 600 per minute), so quiet callers
are counted exactly, one unit per request, and the count in Redis never passes a limit. What a
lease changes: a process may serve the units it leased up to a second after counting them, and
a lease's unspent units expire with it (at most 1 % of a limit, once per burst). Near a limit
(a lease no longer fits) every request is counted on its own again, so the last units of a
window go exactly to the requests that fit. ``rate_limit_lease_fraction=0``: one round trip
per request.

Redis unavailable (down, or hung: see :mod:`libs.redis`, which skips it for every caller after
one call fails or takes longer than ``redis_timeout_seconds``): the default fail mode is
*open*, degraded to per-process limits. Refusing every request while the counter store is down
would turn a Redis outage into a full API outage, for limits whose job is fairness and
capacity; counting the same limits in process memory instead (:class:`libs.ratelimit.
LocalLimiter`) keeps both, loosened to ``limit`` per gateway process rather than overall.
Answers carry no ``RateLimit-*`` headers meanwhile (the local numbers are not the global
ones), and each such request is counted in ``aistack_gateway_rate_limit_unavailable_total``.
``rate_limit_fail_mode=closed`` answers 503 instead, for deployments where a limit is a
contract (a hard cap on a metered resource) rather than protection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.settings import GatewaySettings
from libs.entitlements import EntitlementsCache, EntitlementsUnavailable
from libs.errors import RateLimited, ServiceUnavailable
from libs.identity import Principal
from libs.ratelimit import LocalLimiter, RateDecision, RateDecisions, hit_many
from libs.redis import guard_for

log = logging.getLogger("aistack.gateway.ratelimit")

KEY_PREFIX = "aistack:rl:rpm"
FAIL_PREFIX = "aistack:rl:authfail"

REDIS_FAILURES = Counter(
    "aistack_gateway_rate_limit_unavailable_total",
    "Requests whose rate limit could not be checked in Redis (down or hung), by fail mode "
    "applied (open: counted per process instead)",
    ["mode"],
)
REFUSED = Counter(
    "aistack_gateway_rate_limited_total",
    "Requests refused by a rate limit, by the limit that refused",
    ["limit"],
)

_LOG_EVERY = 10.0
# how long a process may spend a lease of units after counting it in Redis
LEASE_SECONDS = 1.0
LEASE_MAX = 128
# a refused lease: count one request at a time for this long (the limit is close)
EXACT_SECONDS = 1.0
_MAX_LEASES = 50_000


@dataclass(slots=True)
class _Lease:
    """Units of one set of limits counted in Redis and not yet spent by this process."""

    size: int
    left: int
    taken: float
    # the strictest decision when the lease was counted (its ``remaining`` excludes the lease)
    decision: RateDecision
    exact_until: float = 0.0

    def headers(self, now: float) -> dict[str, str]:
        d = self.decision
        return {
            "RateLimit-Limit": str(d.limit),
            "RateLimit-Remaining": str(d.remaining + self.left),
            "RateLimit-Reset": str(math.ceil(max(0.0, d.reset_seconds - (now - self.taken)))),
        }


class RequestLimiter:
    """Checks a principal's request limits (leased from Redis, see the module's docstring);
    applies the fail mode when Redis is down."""

    def __init__(self, redis: Redis, settings: GatewaySettings) -> None:
        self.redis = redis
        self.window = settings.rate_limit_window_seconds
        self.key_rpm = settings.rate_limit_key_rpm
        self.user_rpm = settings.rate_limit_user_rpm
        self.org_rpm = settings.rate_limit_org_rpm
        self.fail_closed = settings.rate_limit_fail_mode == "closed"
        self.retry_seconds = settings.redis_retry_seconds
        self.lease_fraction = settings.rate_limit_lease_fraction
        self.guard = guard_for(redis)
        # an organization's rpm comes from its plan (published by billing), else org_rpm
        self.entitlements = EntitlementsCache(
            redis, settings.entitlements_ttl_seconds, timeout_s=settings.redis_timeout_seconds
        )
        # the limits while Redis is unavailable (failing open), this process alone
        self.local = LocalLimiter()
        self._logged_at = float("-inf")
        self._leases: dict[tuple[tuple[str, int], ...], _Lease] = {}
        self._taking: dict[tuple[tuple[str, int], ...], asyncio.Future[None]] = {}

    async def org_rpm_for(self, principal: Principal) -> int | None:
        """The organization's requests per window: its plan's (None: unlimited), else -1:
        the gateway's setting (billing not deployed, Redis unreachable)."""
        if principal.org_id is None or not self.guard.up:
            return -1
        try:
            ent = await self.entitlements.get(principal.org_id)  # bounded by its own timeout
        except EntitlementsUnavailable:
            return -1
        return -1 if ent is None else ent.limits.rpm

    def limits_for(
        self, principal: Principal, org_rpm: int | None = -1
    ) -> list[tuple[str, str, int]]:
        """``(name, redis key, limit)`` of every limit that applies to ``principal``
        (``org_rpm``: the organization's, -1 for the setting, None for none)."""
        out: list[tuple[str, str, int]] = []
        if principal.key_id is not None:
            # a key spends its own budget, not its creator's
            out.append(
                ("key", f"{KEY_PREFIX}:key:{principal.key_id}", principal.rpm_limit or self.key_rpm)
            )
        elif principal.user_id is not None:
            out.append(("user", f"{KEY_PREFIX}:user:{principal.user_id}", self.user_rpm))
        if principal.org_id is not None and org_rpm == -1:
            out.append(("org", f"{KEY_PREFIX}:org:{principal.org_id}", self.org_rpm))
        elif principal.org_id is not None and org_rpm is not None:
            # a plan's limit counts in a bucket of its own: a GCRA bucket holds a time, which
            # a smaller limit would carry into the next plan (an upgrade still refused)
            key = f"{KEY_PREFIX}:org:{principal.org_id}:{org_rpm}"
            out.append(("org", key, org_rpm))
        return out

    async def check(self, principal: Principal) -> dict[str, str]:
        """RateLimit-* headers for an allowed request; raises 429 (or 503 failing closed)."""
        limits = self.limits_for(principal, await self.org_rpm_for(principal))
        if not limits:
            return {}
        cap = min(LEASE_MAX, int(min(limit for _, _, limit in limits) * self.lease_fraction))
        if cap <= 1:
            if not self.guard.up:
                return self._unavailable(limits, None)
            try:
                result = await self._hit(limits, 1)
            except (RedisError, OSError, TimeoutError) as exc:
                return self._unavailable(limits, exc)
            return self._decide(limits, result)
        ident = tuple((key, limit) for _, key, limit in limits)
        while True:
            now = time.monotonic()
            lease = self._leases.get(ident)
            if lease is not None and lease.left > 0 and now - lease.taken < LEASE_SECONDS:
                lease.left -= 1
                return lease.headers(now)
            taking = self._taking.get(ident)
            if taking is None:
                break
            # another request of this principal is taking the next lease: share it
            await asyncio.shield(taking)
        if not self.guard.up:
            return self._unavailable(limits, None)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._taking[ident] = done
        try:
            return await self._take(ident, limits, lease, cap, now)
        finally:
            del self._taking[ident]
            done.set_result(None)

    async def _take(
        self,
        ident: tuple[tuple[str, int], ...],
        limits: list[tuple[str, str, int]],
        old: _Lease | None,
        cap: int,
        now: float,
    ) -> dict[str, str]:
        """Count a new lease in Redis (or one unit near the limit) and spend its first unit."""
        if old is None or now < old.exact_until:
            size = 1
        elif old.left == 0 and now - old.taken < LEASE_SECONDS:
            size = min(cap, old.size * 2)  # used up in time: the caller is busy
        else:
            size = max(1, old.size - old.left)  # expired unspent: what was used
        try:
            result = await self._hit(limits, size)
            exact_until = 0.0
            if not result.allowed and size > 1:
                exact_until = time.monotonic() + EXACT_SECONDS
                size = 1
                result = await self._hit(limits, 1)
        except (RedisError, OSError, TimeoutError) as exc:
            self._leases.pop(ident, None)
            return self._unavailable(limits, exc)
        taken = time.monotonic()
        if not result.allowed:
            exact_until = taken + EXACT_SECONDS
        if len(self._leases) >= _MAX_LEASES:
            self._evict()
        granted = size if result.allowed else 0
        lease = _Lease(size, max(0, granted - 1), taken, result.strictest(), exact_until)
        self._leases[ident] = lease
        headers = self._decide(limits, result)  # raises when refused
        if size == 1:
            return headers
        return lease.headers(taken)

    def _evict(self) -> None:
        now = time.monotonic()
        for ident in [i for i, lease in self._leases.items() if now - lease.taken >= 60]:
            del self._leases[ident]
        if len(self._leases) >= _MAX_LEASES:
            self._leases.clear()

    async def _hit(self, limits: list[tuple[str, str, int]], cost: int) -> RateDecisions:
        call = hit_many(self.redis, [(key, limit, self.window) for _, key, limit in limits], cost)
        return await self.guard.run("gateway_rate_limit", call)

    def _decide(self, limits: list[tuple[str, str, int]], result: RateDecisions) -> dict[str, str]:
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

    def _unavailable(
        self, limits: list[tuple[str, str, int]], exc: BaseException | None
    ) -> dict[str, str]:
        """Redis is unavailable: refuse (closed), or count in this process only (open)."""
        mode = "closed" if self.fail_closed else "open"
        REDIS_FAILURES.labels(mode).inc()
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            # once per interval: a Redis outage must not flood the logs, the counter has all
            self._logged_at = now
            log.error(
                "rate limits unavailable (Redis: %s); failing %s",
                exc if exc is not None else "skipped while it is down",
                mode if self.fail_closed else "open, to per-process limits",
            )
        if self.fail_closed:
            raise ServiceUnavailable(
                "Rate limiting is unavailable",
                code="rate_limit_unavailable",
                headers={"Retry-After": str(max(1, math.ceil(self.retry_seconds)))},
            )
        result = self.local.hit_many([(key, limit, self.window) for _, key, limit in limits])
        self._decide(limits, result)  # raises 429 past a limit
        return {}


class FailureLimiter:
    """Failed authentications per client address; past the limit the address is refused
    (429) before anything is verified, so guessing keys cannot load the auth service.

    Only failures touch Redis; the block itself is remembered in-process until it ends. While
    Redis is unavailable failures are counted in this process alone (guessing stays limited).
    """

    def __init__(self, redis: Redis, limit: int, window: int = 60) -> None:
        self.redis = redis
        self.limit = limit
        self.window = window
        self.guard = guard_for(redis)
        self.local = LocalLimiter()
        self._blocked: dict[str, float] = {}
        self._logged_at = float("-inf")

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
        limits = [(f"{FAIL_PREFIX}:{ip}", self.limit, self.window)]
        try:
            result = await self.guard.run(
                "gateway_auth_failures", hit_many(self.redis, limits, force=True)
            )
        except (RedisError, OSError, TimeoutError) as exc:
            now = time.monotonic()
            if now - self._logged_at >= _LOG_EVERY:
                self._logged_at = now
                log.warning("failed authentications counted per process (Redis: %s)", exc)
            result = self.local.hit_many(limits, force=True)
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
