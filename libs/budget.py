"""Spend budgets that hold under concurrency: reserve a call's worst case atomically in Redis
before the provider call, settle to the real cost after.

A budget is a counter in Redis of what the period has spent plus what calls in flight have
reserved, in units of 1e-8 USD (the ledger's precision; a Lua number holds them exactly up to
about 90 million USD). :func:`reserve` runs one Lua script over every budget a call counts
against (the organization's, an API key's): either all of them have room for the amount and
all grow by it, or none changes. So N concurrent calls can never together pass a budget:
whatever order Redis runs them in, each sees the others' reservations. A token budget (the
plan's monthly tokens) is such a counter in tokens, reserved in the same script call
(:func:`reserve_counted`: each counter with its own amount). :func:`settle` moves
the counters by (real cost - reserved): a call that cost less gives the rest back, one that
cost more (an answer longer than its estimate) adds the difference.

Counters live for the period (keys carry its start) plus a margin, then expire. The llm's
metering (services/llm/chat/metering.py) is the caller; billing's ledger stays the record
of what was spent.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

UNIT = Decimal("0.00000001")
# a period's counter outlives it by this much (a month plus late settlements)
TTL_S = 40 * 24 * 3600

# KEYS: the budgets' counters (n), then counters to move first (this process's changes not
# sent yet: see BudgetBook); ARGV: ttl, n, each budget's amount, each one's limit, what each
# one is assumed to hold beyond its counter (changes in flight), then each change. Answers
# {1, 0, 0, counters after...} or {0, index of the first budget without room, its counter}.
_RESERVE = """
local ttl, n = ARGV[1], tonumber(ARGV[2])
for j = n + 1, #KEYS do
  redis.call('INCRBY', KEYS[j], ARGV[2 + 3 * n + j - n])
  redis.call('EXPIRE', KEYS[j], ttl)
end
for i = 1, n do
  local have = tonumber(redis.call('GET', KEYS[i]) or '0')
  local assumed = tonumber(ARGV[2 + 2 * n + i])
  if have + assumed + tonumber(ARGV[2 + i]) > tonumber(ARGV[2 + n + i]) then
    return {0, i, have}
  end
end
local out = {1, 0, 0}
for i = 1, n do
  out[3 + i] = redis.call('INCRBY', KEYS[i], ARGV[2 + i])
  redis.call('EXPIRE', KEYS[i], ttl)
end
return out
"""

# KEYS: the counters; ARGV: ttl, then each counter's change. Answers the counters after.
_SETTLE = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('INCRBY', KEYS[i], ARGV[1 + i])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return out
"""


def units(usd: Decimal) -> int:
    """USD as budget units (rounded up: a reservation never falls short)."""
    return int((usd / UNIT).to_integral_value(rounding=ROUND_CEILING))


def budget_key(org_id: uuid.UUID, period: str, key_id: uuid.UUID | None = None) -> str:
    """The counter of an organization's (or one of its API keys') budget for ``period``
    (the period's start, ISO); hash-tagged by organization (one Redis Cluster slot)."""
    owner = "org" if key_id is None else f"key:{key_id}"
    return f"aistack:budget:{{{org_id}}}:{owner}:{period}"


def token_budget_key(org_id: uuid.UUID, period: str) -> str:
    """The counter of an organization's monthly token budget (in tokens, not USD units)."""
    return f"aistack:budget:{{{org_id}}}:tokens:{period}"


@dataclass(frozen=True)
class Reservation:
    """What a call reserved on each counter (``amounts[i]`` on ``keys[i]``, in the counter's
    own units): settled once with what it really used."""

    keys: tuple[str, ...]
    amounts: tuple[int, ...]
    # the counters right after (a reservation made in Redis): what BudgetBook learns
    values: tuple[int, ...] = ()

    @property
    def amount(self) -> int:
        """What was reserved on the first counter (every one, for :func:`reserve`'s)."""
        return self.amounts[0] if self.amounts else 0


@dataclass(frozen=True)
class Refusal:
    """A budget without room: which one (index in the keys), its limit and what it has."""

    index: int
    limit: Decimal
    spent: Decimal


class _Scripts:
    def __init__(self) -> None:
        self.sha: dict[str, str] = {}

    async def run(self, redis: Redis, script: str, keys: Sequence[str], args: list[int]) -> object:
        argv = [str(a) for a in args]
        sha = self.sha.get(script)
        if sha is not None:
            try:
                return await redis.evalsha(sha, len(keys), *keys, *argv)  # type: ignore[misc]
            except NoScriptError:
                pass
        self.sha[script] = await redis.script_load(script)
        return await redis.evalsha(self.sha[script], len(keys), *keys, *argv)  # type: ignore[misc]


_SCRIPTS = _Scripts()


@dataclass(frozen=True)
class Counted:
    """A budget's counter, its limit and what a call asks of it, in the counter's units
    (1e-8 USD for spend, tokens for a token budget)."""

    key: str
    limit: int
    amount: int


async def reserve_counted(
    redis: Redis,
    budgets: Sequence[Counted],
    *,
    carry: Mapping[str, int] | None = None,
    assumed: Sequence[int] | None = None,
) -> Reservation | tuple[int, int]:
    """Reserve each budget's amount on every budget at once, or on none: the reservation, or
    (index of the first budget without room, what its counter holds). ``carry``: counter
    changes applied first, whatever the answer; ``assumed``: what each budget is taken to hold
    beyond its counter (changes on their way)."""
    keys = [b.key for b in budgets]
    if not keys:
        return Reservation((), ())
    moves = {k: d for k, d in (carry or {}).items() if d}
    extra = list(assumed) if assumed is not None else [0] * len(keys)
    args = [
        TTL_S,
        len(keys),
        *(b.amount for b in budgets),
        *(b.limit for b in budgets),
        *extra,
        *moves.values(),
    ]
    answer: list[int] = await _SCRIPTS.run(  # type: ignore[assignment]
        redis, _RESERVE, [*keys, *moves], args
    )
    ok, index, have = answer[:3]
    if ok:
        values = tuple(int(v) for v in answer[3:])
        return Reservation(tuple(keys), tuple(b.amount for b in budgets), values)
    return int(index) - 1, int(have)


async def settle_counted(redis: Redis, reservation: Reservation, used: Sequence[int]) -> None:
    """Replace each counter's reservation by what the call really used (``used[i]``)."""
    deltas = [u - a for u, a in zip(used, reservation.amounts, strict=True)]
    await adjust(redis, dict(zip(reservation.keys, deltas, strict=True)))


async def adjust(redis: Redis, deltas: Mapping[str, int]) -> dict[str, int]:
    """Move counters by ``deltas`` in one script call (keys of one organization: one slot);
    several calls' settlements summed make one call. Returns the counters after."""
    keys = [k for k, d in deltas.items() if d]
    if not keys:
        return {}
    after: list[int] = await _SCRIPTS.run(  # type: ignore[assignment]
        redis, _SETTLE, keys, [TTL_S, *(deltas[k] for k in keys)]
    )
    return dict(zip(keys, (int(v) for v in after), strict=True))


async def reserve(
    redis: Redis, budgets: Sequence[tuple[str, Decimal]], amount: Decimal
) -> Reservation | Refusal:
    """Reserve ``amount`` USD on every ``(key, limit)`` at once, or on none."""
    n = units(amount)
    result = await reserve_counted(redis, [Counted(k, units(lim), n) for k, lim in budgets])
    if isinstance(result, Reservation):
        return result
    index, have = result
    return Refusal(index, budgets[index][1], Decimal(have) * UNIT)


async def settle(redis: Redis, reservation: Reservation, cost: Decimal) -> None:
    """Replace the reservation by the call's real ``cost`` on its (USD) budgets."""
    await settle_counted(redis, reservation, [units(cost)] * len(reservation.keys))


async def spent(redis: Redis, key: str) -> Decimal:
    """What a budget's counter holds (spent and reserved), in USD."""
    raw = await redis.get(key)
    return Decimal(int(raw or 0)) * UNIT


class BudgetBook:
    """One process's view of the budget counters, so that a call far from every limit skips
    the reservation's round trip to Redis.

    Every answer from Redis (a reservation, a settlement's flush) tells the counters' values;
    the book keeps them with when they were learned, and what this process has sent that is
    not answered yet (``inflight``). A call may then be admitted here when, for each of its
    budgets, the last value learned within ``stale_s``, plus the changes in flight, plus this
    process's changes not sent yet (``pending``, the caller's), plus the call's amount, stays
    at or below ``1 - exact_margin`` of the limit. Its amount is then sent with the next
    settlements (the caller adds it to them), so Redis's counter still ends up the sum of
    every call's reservation and, once settled, of the real costs.

    Within the last ``exact_margin`` of a limit every call reserves in Redis (with this
    process's unsent changes carried in the same script call, and the in-flight ones
    assumed): exact, whatever the number of processes. Before that, another process's calls
    of the last ``stale_s`` may be unseen: several processes together can pass the
    ``1 - exact_margin`` line by what they admit in that time, never the limit itself unless
    that exceeds the margin. ``exact_margin = 1`` reserves every call in Redis.

    Measured (docs/benchmarks.md, "Budgets without the round trip"): the reservation's round
    trip was the budget's whole cost on a chat at c=1.
    """

    MAX_KEYS = 10_000

    def __init__(self, exact_margin: float, stale_s: float = 1.0) -> None:
        self.exact_margin = exact_margin
        self.stale_s = stale_s
        self.known: dict[str, tuple[int, float]] = {}
        self.inflight: dict[str, int] = {}

    def admits(self, budgets: Sequence[Counted], pending: Mapping[str, int], now: float) -> bool:
        """Whether the call may be admitted without Redis (see the class docstring)."""
        if self.exact_margin >= 1:
            return False
        for b in budgets:
            known = self.known.get(b.key)
            if known is None or now - known[1] > self.stale_s:
                return False
            line = b.limit - int(b.limit * self.exact_margin)
            held = known[0] + self.inflight.get(b.key, 0) + pending.get(b.key, 0)
            if held + b.amount > line:
                return False
        return True

    def learn(self, values: Mapping[str, int], now: float) -> None:
        """Counter values Redis answered."""
        if len(self.known) > self.MAX_KEYS:
            self.known = {k: v for k, v in self.known.items() if now - v[1] <= self.stale_s}
        for key, value in values.items():
            self.known[key] = (value, now)

    def assumed(self, keys: Sequence[str]) -> list[int]:
        """What each counter is taken to hold beyond its value: changes in flight."""
        return [max(0, self.inflight.get(k, 0)) for k in keys]  # a refund counts once landed

    def sending(self, deltas: Mapping[str, int]) -> None:
        for key, d in deltas.items():
            self.inflight[key] = self.inflight.get(key, 0) + d

    def sent(self, deltas: Mapping[str, int]) -> None:
        """Answered, or failed (the caller queues them again)."""
        for key, d in deltas.items():
            left = self.inflight.get(key, 0) - d
            if left:
                self.inflight[key] = left
            else:
                self.inflight.pop(key, None)
