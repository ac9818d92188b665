"""Rate limits shared by every process: GCRA in Redis, decided in one round trip.

The gateway counts requests per API key, user and organization; the llm service counts
tokens per minute (``cost=tokens``). Several limits are checked together and atomically by
one Lua script: the request passes only when every limit has room, and nothing is consumed
when one refuses. The clock is Redis's (``TIME``), so any number of processes sharing one
Redis enforce one global limit.

GCRA ("generic cell rate algorithm", a token bucket stored as one timestamp per key): a
limit of ``limit`` units per ``window`` seconds gives each unit an emission interval
``window / limit``. The key holds the theoretical arrival time (TAT), the moment the bucket
will be full again. A cost ``c`` moves it to ``max(TAT, now) + c * interval``; the hit is
allowed while that stays within ``window`` of now. Bursts up to ``limit`` pass at once, then
the bucket refills smoothly (no fixed-window double bursts at minute boundaries).

Units counted ahead of time (a TPM reservation that turned out larger than the real usage)
are given back by :func:`refund_many`: the TAT moves back by ``n * interval``, never before
now, so a refund restores at most what was taken and never lifts a limit above ``limit``.

With Redis Cluster, all keys of one :func:`hit_many` or :func:`refund_many` call must share
a hash slot (``{...}`` hash tags).

:class:`LocalLimiter` is the same algorithm in process memory: what callers count instead while
Redis is unavailable (libs/redis.py), so failing open still bounds a caller to its limit per
process rather than to nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

# TAT is stored as "<whole microseconds> <fraction>": Lua numbers are doubles, whose
# resolution at today's epoch in microseconds is 0.25 us, and rounding on every hit would
# drift (a limit of 7 per minute must allow exactly 7). Differences to ``now`` are exact.
# shared by both scripts: the clock, and a key's TAT read as an offset from now / written back
_LUA_TAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- microseconds from now to the key's TAT (negative when the bucket is full); nil: no TAT
local function tat_offset(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local whole, frac = string.match(raw, '^(%-?%d+) (%d+%.?%d*)$')
  if not whole then return nil end
  return (tonumber(whole) - now) + tonumber(frac)
end
local function store_tat(key, offset)
  local whole = math.floor(offset)
  redis.call('SET', key, string.format('%.0f %.9f', now + whole, offset - whole),
    'PX', math.ceil(offset / 1000) + 1)
end
"""

_LUA = (
    _LUA_TAT
    + """
local cost = tonumber(ARGV[1])
local force = ARGV[2] == '1'
local n = #KEYS
local offsets = {}
local news = {}
local all_ok = true
for i = 1, n do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  local interval = window / limit
  local offset = tat_offset(KEYS[i]) or 0
  if offset < 0 then offset = 0 end
  local new = offset + cost * interval
  offsets[i] = offset
  news[i] = new
  -- 1 ns of slack absorbs floating-point error of the sum
  if new > window + 0.001 then all_ok = false end
end
local out = {}
for i = 1, n do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  local interval = window / limit
  local new = news[i]
  local fits = new <= window + 0.001
  local after = offsets[i]
  if (all_ok or force) and cost > 0 then
    after = new
    store_tat(KEYS[i], after)
  end
  local remaining = math.floor((window - after) / interval + 0.000001)
  if remaining < 0 then remaining = 0 end
  local retry = 0
  if not fits then retry = math.ceil(new - window) end
  out[i] = {fits and 1 or 0, remaining, math.ceil(after), retry}
end
return {all_ok and 1 or 0, out}
"""
)


# KEYS: the limits; ARGV: limit, window (us) and amount per key. A TAT already at or before
# now stays untouched (the bucket is full); one moved back to now or earlier is deleted
# (the same as a full bucket). Returns each key's remaining units.
_REFUND_LUA = (
    _LUA_TAT
    + """
local out = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[3 * i - 2])
  local window = tonumber(ARGV[3 * i - 1])
  local amount = tonumber(ARGV[3 * i])
  local interval = window / limit
  local after = 0
  local offset = tat_offset(KEYS[i])
  if offset and offset > 0 then
    after = offset
    if amount > 0 then
      after = offset - amount * interval
      if after > 0.001 then
        store_tat(KEYS[i], after)
      else
        after = 0
        redis.call('DEL', KEYS[i])
      end
    end
  end
  local remaining = math.floor((window - after) / interval + 0.000001)
  if remaining < 0 then remaining = 0 end
  out[i] = remaining
end
return out
"""
)


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of one limit: whether it had room, and what to tell the client."""

    allowed: bool
    limit: int
    remaining: int
    # seconds until the limit is fully replenished
    reset_seconds: float
    # seconds to wait before the same request would fit (0 when allowed)
    retry_after: float

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit/Remaining/Reset`` (and ``Retry-After`` when refused)."""
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_seconds)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out


@dataclass(frozen=True, slots=True)
class RateDecisions:
    """The outcome of several limits checked together."""

    allowed: bool
    decisions: tuple[RateDecision, ...]

    def strictest(self) -> RateDecision:
        """The decision to report: a refusing one (longest wait), else the least remaining."""
        refused = [d for d in self.decisions if not d.allowed]
        if refused:
            return max(refused, key=lambda d: d.retry_after)
        return min(self.decisions, key=lambda d: (d.remaining, -d.reset_seconds))


class _Script:
    """The Lua script, run by EVALSHA (EVAL once per Redis that has not cached it)."""

    def __init__(self, source: str) -> None:
        import hashlib

        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis's script id

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            return await redis.eval(self.source, len(keys), *keys, *args)  # type: ignore[misc]


_SCRIPT = _Script(_LUA)
_REFUND = _Script(_REFUND_LUA)


async def hit_many(
    redis: Redis,
    limits: Sequence[tuple[str, int, float]],
    cost: int = 1,
    *,
    force: bool = False,
) -> RateDecisions:
    """Count ``cost`` against every ``(key, limit, window_seconds)`` at once, atomically.

    Passes only when all have room; when one refuses nothing is consumed, unless ``force``
    (usage that already happened, such as the tokens of a finished completion: it is
    recorded and later requests wait it off). ``cost=0`` only reads. A cost above a limit
    can never pass. Raises redis errors: the caller decides whether to fail open or closed.
    """
    if not limits:
        return RateDecisions(True, ())
    if cost < 0:
        raise ValueError("cost must be >= 0")
    keys: list[str] = []
    args: list[Any] = [cost, 1 if force else 0]
    for key, limit, window in limits:
        if limit < 1 or window <= 0:
            raise ValueError(f"invalid limit {limit}/{window}s for {key}")
        keys.append(key)
        args += [int(limit), int(window * 1_000_000)]
    raw = await _SCRIPT(redis, keys, args)
    all_ok, rows = raw
    decisions = tuple(
        RateDecision(
            allowed=bool(fits),
            limit=int(limit),
            remaining=int(remaining),
            reset_seconds=int(reset_us) / 1_000_000,
            retry_after=int(retry_us) / 1_000_000,
        )
        for (fits, remaining, reset_us, retry_us), (_, limit, _w) in zip(rows, limits, strict=True)
    )
    return RateDecisions(bool(all_ok), decisions)


async def hit(
    redis: Redis, key: str, limit: int, window_seconds: float, cost: int = 1
) -> RateDecision:
    """Count ``cost`` against one limit of ``limit`` per ``window_seconds`` (one round trip)."""
    result = await hit_many(redis, [(key, limit, window_seconds)], cost)
    return result.decisions[0]


async def refund_many(
    redis: Redis,
    limits: Sequence[tuple[str, int, float]],
    amount: int | Sequence[int],
) -> tuple[int, ...]:
    """Give back units counted earlier on every ``(key, limit, window_seconds)`` at once.

    ``amount`` is one number for all keys or one per key. Each key's TAT moves back by
    ``amount * interval`` but never before now: a refund cannot raise a limit above
    ``limit`` nor give back what has already refilled. Atomic, one round trip; returns the
    remaining units per key. Raises redis errors.
    """
    if not limits:
        return ()
    amounts = [amount] * len(limits) if isinstance(amount, int) else list(amount)
    if len(amounts) != len(limits):
        raise ValueError("one amount per limit")
    keys: list[str] = []
    args: list[Any] = []
    for (key, limit, window), n in zip(limits, amounts, strict=True):
        if limit < 1 or window <= 0:
            raise ValueError(f"invalid limit {limit}/{window}s for {key}")
        if n < 0:
            raise ValueError("amount must be >= 0")
        keys.append(key)
        args += [int(limit), int(window * 1_000_000), int(n)]
    rows = await _REFUND(redis, keys, args)
    return tuple(int(r) for r in rows)


_LOCAL_MAX_KEYS = 100_000


class LocalLimiter:
    """GCRA like :func:`hit_many`, in this process's memory (monotonic clock).

    The fallback while Redis is unavailable: each process enforces every limit on its own, so a
    caller gets at most ``limit`` per process instead of ``limit`` overall. The state is
    independent of Redis's and forgotten when Redis is back.
    """

    def __init__(self, max_keys: int = _LOCAL_MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._tat: dict[str, float] = {}

    def hit_many(
        self,
        limits: Sequence[tuple[str, int, float]],
        cost: int = 1,
        *,
        force: bool = False,
    ) -> RateDecisions:
        """As :func:`hit_many`, decided in memory."""
        if not limits:
            return RateDecisions(True, ())
        if cost < 0:
            raise ValueError("cost must be >= 0")
        now = time.monotonic()
        rows: list[tuple[float, float, float, bool]] = []  # interval, offset, new, fits
        all_ok = True
        for key, limit, window in limits:
            if limit < 1 or window <= 0:
                raise ValueError(f"invalid limit {limit}/{window}s for {key}")
            interval = window / limit
            offset = max(0.0, self._tat.get(key, now) - now)
            new = offset + cost * interval
            fits = new <= window + 1e-9
            all_ok = all_ok and fits
            rows.append((interval, offset, new, fits))
        if (all_ok or force) and cost > 0 and len(self._tat) >= self.max_keys:
            self._tat = {k: t for k, t in self._tat.items() if t > now}
            if len(self._tat) >= self.max_keys:
                self._tat.clear()
        decisions = []
        for (key, limit, window), (interval, offset, new, fits) in zip(limits, rows, strict=True):
            after = offset
            if (all_ok or force) and cost > 0:
                after = new
                self._tat[key] = now + new
            remaining = max(0, math.floor((window - after) / interval + 1e-6))
            decisions.append(
                RateDecision(
                    allowed=fits,
                    limit=int(limit),
                    remaining=remaining,
                    reset_seconds=after,
                    retry_after=0.0 if fits else new - window,
                )
            )
        return RateDecisions(all_ok, tuple(decisions))

    def clear(self) -> None:
        self._tat.clear()
