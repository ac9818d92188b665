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

# KEYS: the budgets' counters; ARGV: ttl, then each budget's amount, each one's limit, a
# block to add for the process's lease, and the line the counter must stay under for the block
# to be granted. Answers {1, 0, 0, each block granted...} or {0, index of the first budget
# without room, its counter}.
_RESERVE = """
local n = #KEYS
local have = {}
for i = 1, n do
  have[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if have[i] + tonumber(ARGV[1 + i]) > tonumber(ARGV[1 + n + i]) then
    return {0, i, have[i]}
  end
end
local out = {1, 0, 0}
for i = 1, n do
  local amount, block = tonumber(ARGV[1 + i]), tonumber(ARGV[1 + 2 * n + i])
  if block > 0 and have[i] + amount + block > tonumber(ARGV[1 + 3 * n + i]) then
    block = 0
  end
  out[3 + i] = block
  redis.call('INCRBY', KEYS[i], amount + block)
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return out
"""

# KEYS: the counters; ARGV: ttl, then each counter's change
_SETTLE = """
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[1 + i])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
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


def token_budget_key(org_id: uuid.UUID, period: str) -> str:
    """The counter of an organization's monthly token budget (in tokens, not USD units)."""
    return f"aistack:budget:{{{org_id}}}:tokens:{period}"


@dataclass(frozen=True)
class Reservation:
    """What a call reserved on each counter (``amounts[i]`` on ``keys[i]``, in the counter's
    own units): settled once with what it really used."""

    keys: tuple[str, ...]
    amounts: tuple[int, ...]
    # what Redis added beyond the amounts for the process's leases (BudgetLeases)
    granted: tuple[int, ...] = ()

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
    blocks: Sequence[int] | None = None,
    lines: Sequence[int] | None = None,
) -> Reservation | tuple[int, int]:
    """Reserve each budget's amount on every budget at once, or on none: the reservation, or
    (index of the first budget without room, what its counter holds). ``blocks``: more to
    reserve on each budget for the process's lease, granted only while the counter stays
    under that budget's ``lines`` entry (what was granted is in ``Reservation.granted``)."""
    keys = [b.key for b in budgets]
    if not keys:
        return Reservation((), ())
    extra = list(blocks) if blocks is not None else [0] * len(keys)
    under = list(lines) if lines is not None else [b.limit for b in budgets]
    args = [
        TTL_S,
        *(b.amount for b in budgets),
        *(b.limit for b in budgets),
        *extra,
        *under,
    ]
    answer: list[int] = await _SCRIPTS.run(redis, _RESERVE, keys, args)  # type: ignore[assignment]
    ok, index, have = answer[:3]
    if ok:
        granted = tuple(int(v) for v in answer[3:])
        return Reservation(tuple(keys), tuple(b.amount for b in budgets), granted)
    return int(index) - 1, int(have)


async def settle_counted(redis: Redis, reservation: Reservation, used: Sequence[int]) -> None:
    """Replace each counter's reservation by what the call really used (``used[i]``)."""
    deltas = [u - a for u, a in zip(used, reservation.amounts, strict=True)]
    await adjust(redis, dict(zip(reservation.keys, deltas, strict=True)))


async def adjust(redis: Redis, deltas: Mapping[str, int]) -> None:
    """Move counters by ``deltas`` in one script call (keys of one organization: one slot);
    several calls' settlements summed make one call."""
    keys = [k for k, d in deltas.items() if d]
    if keys:
        await _SCRIPTS.run(redis, _SETTLE, keys, [TTL_S, *(deltas[k] for k in keys)])


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


class BudgetLeases:
    """Blocks of budget one process reserved in Redis ahead of its calls, so that a call far
    from its limits skips the reservation's round trip.

    A call that must reserve in Redis asks, on each budget, for its amount plus a block (the
    larger of ``block_share`` of the limit and ten of the call's amount); Redis grants the
    block only while the counter stays under ``1 - exact_margin`` of the limit, atomically
    with the reservation. The process then admits later calls from the blocks it holds, with
    no round trip, while each of the call's budgets has a block covering its amount. What a
    process holds is in Redis's counter like any reservation: however many processes hold
    blocks, no call is admitted that the counter would not admit, and a budget is never
    passed. Near the limit no block is granted and every call reserves in Redis.

    A block unused for ``idle_s`` goes back to the counter (and every block at shutdown); a
    process that dies keeps its blocks counted until the period ends (at most one block per
    budget it held: ``block_share`` of the limit, 1 % by default). ``exact_margin = 1``: no
    blocks, a round trip per call.

    Measured (docs/benchmarks.md, "Budgets without the round trip"): the reservation's round
    trip was the budget's whole cost on a chat at c=1.
    """

    def __init__(self, exact_margin: float, block_share: float = 0.01, idle_s: float = 1.0) -> None:
        self.exact_margin = exact_margin
        self.block_share = block_share
        self.idle_s = idle_s
        # per counter: units held, when last drawn on or granted
        self.held: dict[str, tuple[int, float]] = {}
        # counters with a block asked for and not answered yet: concurrent calls ask for none
        # (a burst of calls that all missed the lease would otherwise each take a block)
        self.asking: set[str] = set()

    def take(self, budgets: Sequence[Counted], now: float) -> bool:
        """Admit a call from the blocks held, if they cover it on every budget."""
        if not budgets:
            return False
        for b in budgets:
            held = self.held.get(b.key)
            if held is None or held[0] < b.amount:
                return False
        for b in budgets:
            self.held[b.key] = (self.held[b.key][0] - b.amount, now)
        return True

    def asks(self, budgets: Sequence[Counted]) -> tuple[list[int], list[int]]:
        """The blocks to ask for with a reservation, and the lines they must stay under."""
        if self.exact_margin >= 1:
            return [0] * len(budgets), [b.limit for b in budgets]
        blocks = [
            0 if b.key in self.asking else max(10 * b.amount, int(b.limit * self.block_share))
            for b in budgets
        ]
        lines = [b.limit - int(b.limit * self.exact_margin) for b in budgets]
        self.asking.update(b.key for b, block in zip(budgets, blocks, strict=True) if block)
        return blocks, lines

    def answered(self, budgets: Sequence[Counted], blocks: Sequence[int]) -> None:
        """The reservation that asked for ``blocks`` was answered (or failed)."""
        for b, block in zip(budgets, blocks, strict=True):
            if block:
                self.asking.discard(b.key)

    def grant(self, keys: Sequence[str], granted: Sequence[int], now: float) -> None:
        for key, g in zip(keys, granted, strict=True):
            if g > 0:
                held = self.held.get(key, (0, now))[0]
                self.held[key] = (held + g, now)

    def release(self, now: float | None = None) -> dict[str, int]:
        """Take back the blocks unused for ``idle_s`` (all of them when ``now`` is None): the
        counter changes that give them back."""
        out: dict[str, int] = {}
        for key, (units, at) in list(self.held.items()):
            if now is None or now - at >= self.idle_s:
                del self.held[key]
                if units:
                    out[key] = -units
        return out
