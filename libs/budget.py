"""Spend budgets that hold under concurrency: reserve a call's worst case atomically in Redis
before the provider call, settle to the real cost after.

A budget is a counter in Redis of what the period has spent plus what calls in flight have
reserved, in units of 1e-8 USD (the ledger's precision; a Lua number holds them exactly up to
about 90 million USD). :func:`reserve` runs one Lua script over every budget a call counts
against (the organization's, an API key's): either all of them have room for the amount and
all grow by it, or none changes. So N concurrent calls can never together pass a budget:
whatever order Redis runs them in, each sees the others' reservations. :func:`settle` moves
the counters by (real cost - reserved): a call that cost less gives the rest back, one that
cost more (an answer longer than its estimate) adds the difference.

Counters live for the period (keys carry its start) plus a margin, then expire. The llm's
metering (services/llm/chat/metering.py) is the caller; billing's ledger stays the record
of what was spent.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

UNIT = Decimal("0.00000001")
# a period's counter outlives it by this much (a month plus late settlements)
TTL_S = 40 * 24 * 3600

_RESERVE = """
local amount = tonumber(ARGV[1])
for i = 1, #KEYS do
  local spent = tonumber(redis.call('GET', KEYS[i]) or '0')
  if spent + amount > tonumber(ARGV[2 + i]) then
    return {0, i, spent}
  end
end
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], amount)
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return {1, 0, 0}
"""

_SETTLE = """
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[1])
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return 1
"""


def units(usd: Decimal) -> int:
    """USD as budget units (rounded up: a reservation never falls short)."""
    return int((usd / UNIT).to_integral_value(rounding=ROUND_CEILING))


def budget_key(org_id: uuid.UUID, period: str, key_id: uuid.UUID | None = None) -> str:
    """The counter of an organization's (or one of its API keys') budget for ``period``
    (the period's start, ISO); hash-tagged by organization (one Redis Cluster slot)."""
    owner = "org" if key_id is None else f"key:{key_id}"
    return f"aistack:budget:{{{org_id}}}:{owner}:{period}"


@dataclass(frozen=True)
class Reservation:
    """What a call reserved: settled once with its real cost."""

    keys: tuple[str, ...]
    amount: int


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


async def reserve(
    redis: Redis, budgets: Sequence[tuple[str, Decimal]], amount: Decimal
) -> Reservation | Refusal:
    """Reserve ``amount`` USD on every ``(key, limit)`` at once, or on none."""
    n = units(amount)
    keys = [k for k, _ in budgets]
    args = [n, TTL_S, *(units(limit) for _, limit in budgets)]
    answer: list[int] = await _SCRIPTS.run(redis, _RESERVE, keys, args)  # type: ignore[assignment]
    ok, index, spent = answer
    if ok:
        return Reservation(tuple(keys), n)
    limit = budgets[int(index) - 1][1]
    return Refusal(int(index) - 1, limit, Decimal(int(spent)) * UNIT)


async def settle(redis: Redis, reservation: Reservation, cost: Decimal) -> None:
    """Replace the reservation by the call's real ``cost`` on its budgets."""
    delta = units(cost) - reservation.amount
    if delta and reservation.keys:
        await _SCRIPTS.run(redis, _SETTLE, reservation.keys, [delta, TTL_S])


async def spent(redis: Redis, key: str) -> Decimal:
    """What a budget's counter holds (spent and reserved), in USD."""
    raw = await redis.get(key)
    return Decimal(int(raw or 0)) * UNIT
