"""Fair dispatch: one organization's flood never starves another's single job.

An organization's jobs wait outside arq's queue, in Redis keys under
:func:`libs.queue.names.fair_prefix` (``<queue>:fair:``):

- ``q:<tier>:<org>|<function>``: a sub-queue (sorted set, in enqueue order: the queue's
  counter ``n``) per priority tier, organization and function;
- ``ring:<tier>``: the tier's members (``<org>|<function>``) scored by when each was last
  served, so the least recently served goes next (round robin; a newcomer goes first);
- ``waiting``: every waiting job with its enqueue time (depth and oldest age; a job taken out
  of it, by a cancel, is skipped when its turn comes);
- ``limits``: the per-organization concurrency limit of each function (its job type's
  ``concurrency``), published by the queue's workers;
- ``run:<org>|<function>``: the jobs of a limited member that hold a slot (dispatched or
  running), scored by when the slot lapses unless the worker running it renews it, so a slot
  of a worker that died frees itself.

Each poll of a worker runs :data:`_POLL` once: it moves up to as many jobs as the worker has
free slots (less those already ready on arq's queue) from the sub-queues to arq's queue, high
tier first and round robin within a tier, skipping members at their limit; then it claims up
to that many ready jobs for the worker (arq's in-progress key, with the worker's lease) and
returns them with what their start reads (the job, its try, an abort or cancel asked for).
One round trip per poll, whatever the number of workers: the script runs
atomically, so two workers never take the same job.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from libs.queue.enqueue import fair_member
from libs.queue.names import CANCEL_KEY_PREFIX, PRIORITIES, fair_prefix

# a dispatched job holds its organization's slot this long before a worker starts it (then
# the worker's lease takes over)
DISPATCH_HOLD_MS = 10 * 60 * 1000
# most ring members one poll looks at (members at their limit are passed over)
SCAN_MAX = 200

# KEYS: arq queue. ARGV: now ms, wanted, hold ms, lease ms, scan max
_POLL = """
local queue = KEYS[1]
local prefix = queue .. ':fair:'
local now, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local hold, lease, scan = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
-- the ready jobs no worker holds, oldest first, up to what is wanted: a running job stays
-- in arq's queue until its end is written (a worker that dies leaves it there for another),
-- so counting the queue alone took running jobs for waiting ones, and a slot freed while
-- others ran stayed empty until every job on the queue had ended
local free = {}
local seen, page = 0, 100
while #free < want * 2 and seen < scan * 10 do
  local ids = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'WITHSCORES', 'LIMIT', seen, page)
  for i = 1, #ids, 2 do
    if #free < want * 2 and redis.call('EXISTS', 'arq:in-progress:' .. ids[i]) == 0 then
      free[#free + 1] = ids[i]
      free[#free + 1] = ids[i + 1]
    end
  end
  seen = seen + #ids / 2
  if #ids < page * 2 then break end
end
local room = want - #free / 2
local dispatched = 0
local blocked = 0
for tier = 0, 2 do
  local ring = prefix .. 'ring:' .. tier
  local skip = 0
  while room > 0 and scan > 0 do
    local head = redis.call('ZRANGE', ring, skip, skip)
    if #head == 0 then break end
    scan = scan - 1
    local member = head[1]
    local fn = string.sub(member, string.find(member, '|', 1, true) + 1)
    local limit = tonumber(redis.call('HGET', prefix .. 'limits', fn) or '0')
    local running = prefix .. 'run:' .. member
    local full = false
    if limit > 0 then
      redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
      full = redis.call('ZCARD', running) >= limit
    end
    if full then
      skip = skip + 1
      blocked = blocked + 1
    else
      local sub = prefix .. 'q:' .. tier .. ':' .. member
      local popped = redis.call('ZPOPMIN', sub)
      if #popped > 0 and redis.call('ZREM', prefix .. 'waiting', popped[1]) == 1 then
        -- ready now, in the order dispatched, and claimed below
        local score = now - 1 + dispatched / 1000
        redis.call('ZADD', queue, score, popped[1])
        free[#free + 1] = popped[1]
        free[#free + 1] = score
        if limit > 0 then
          redis.call('ZADD', running, now + hold, popped[1])
          redis.call('PEXPIRE', running, hold + lease)
        end
        room = room - 1
        dispatched = dispatched + 1
      end
      if redis.call('EXISTS', sub) == 0 then
        redis.call('ZREM', ring, member)
      elseif #popped > 0 then
        redis.call('ZADD', ring, redis.call('INCR', prefix .. 'seq'), member)
      end
    end
  end
end
local out = {dispatched, blocked}
for i = 1, #free, 2 do
  local jid = free[i]
  local key = 'arq:in-progress:' .. jid
  if redis.call('EXISTS', key) == 0 then
    redis.call('PSETEX', key, lease, '1')
    -- what arq's run_job reads first: the job, its try (counted now), an abort asked for;
    -- and whether a cancellation was asked
    local try = redis.call('INCR', 'arq:retry:' .. jid)
    redis.call('EXPIRE', 'arq:retry:' .. jid, 88400)
    out[#out + 1] = jid
    out[#out + 1] = free[i + 1]
    out[#out + 1] = redis.call('GET', 'arq:job:' .. jid) or ''
    out[#out + 1] = try
    out[#out + 1] = redis.call('ZREM', 'arq:abort', jid)
    out[#out + 1] = redis.call('EXISTS', 'aistack:job-cancel:' .. jid)
  end
end
return out
"""
_POLL_SHA = hashlib.sha1(_POLL.encode(), usedforsecurity=False).hexdigest()
# written out in _POLL
assert in_progress_key_prefix == "arq:in-progress:" and retry_key_prefix == "arq:retry:"
assert job_key_prefix == "arq:job:" and abort_jobs_ss == "arq:abort"
assert CANCEL_KEY_PREFIX == "aistack:job-cancel:"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job claimed for this worker, with what its start needs (read in the same script)."""

    job_id: str
    score: int
    data: bytes  # arq's serialized job; empty when it expired
    job_try: int
    aborted: bool
    cancelled: bool


@dataclass(frozen=True, slots=True)
class Poll:
    """What one poll did: jobs moved from fair queues, members passed over at their limit,
    and the jobs claimed for this worker."""

    dispatched: int
    blocked: int
    claimed: list[Claimed]


async def poll(redis: Redis, queue: str, *, want: int, lease_ms: int) -> Poll:
    """Dispatch fair jobs and claim up to ``want`` ready jobs of ``queue`` (one round trip)."""
    args: list[Any] = [
        1,
        queue,
        int(time.time() * 1000),
        want,
        DISPATCH_HOLD_MS,
        lease_ms,
        SCAN_MAX,
    ]
    try:
        raw = await redis.evalsha(_POLL_SHA, *args)  # type: ignore[misc]
    except NoScriptError:
        raw = await redis.eval(_POLL, *args)  # type: ignore[misc]
    claimed = [
        Claimed(
            _text(raw[i]),
            int(float(raw[i + 1])),
            raw[i + 2] if isinstance(raw[i + 2], bytes) else str(raw[i + 2]).encode(),
            int(raw[i + 3]),
            bool(raw[i + 4]),
            bool(raw[i + 5]),
        )
        for i in range(2, len(raw) - 5, 6)
    ]
    return Poll(int(raw[0]), int(raw[1]), claimed)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def publish_limits(redis: Redis, queue: str, limits: dict[str, int]) -> None:
    """Set the per-organization concurrency limits of ``queue``'s functions (others: none)."""
    key = fair_prefix(queue) + "limits"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if limits:
            pipe.hset(key, mapping={k: str(v) for k, v in limits.items()})
        await pipe.execute()


def slot_key(queue: str, org_id: str | None, function: str) -> str:
    """The slots a limited member's jobs hold."""
    return fair_prefix(queue) + "run:" + fair_member(org_id, function)


async def hold_slots(redis: Redis, holds: Iterable[tuple[str, str]], until_ms: int) -> None:
    """Renew slots: ``(slot key, job id)`` held until ``until_ms``."""
    async with redis.pipeline(transaction=False) as pipe:
        for key, job_id in holds:
            pipe.zadd(key, {job_id: until_ms})
        await pipe.execute()


async def release_slot(redis: Redis, key: str, job_id: str) -> None:
    """Give back a job's slot (it ended)."""
    await redis.zrem(key, job_id)


async def dequeue_waiting(redis: Redis, queue: str, job_id: str) -> bool:
    """Take a job that waits in a fair queue out of it for good (its turn is then skipped);
    False when it is not waiting there."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(fair_prefix(queue) + "waiting", job_id)
        pipe.delete(job_key_prefix + job_id)
        removed, _ = await pipe.execute()
    return bool(removed)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """How much waits on one queue: ready on arq's queue (not yet taken by a worker), deferred
    there (retries' backoff, deferred jobs), waiting in fair queues; the oldest waiting job's
    enqueue time (ms)."""

    ready: int
    deferred: int
    fair: int
    oldest_ms: int | None

    @property
    def waiting(self) -> int:
        return self.ready + self.fair


# most ready entries :func:`depth` looks at one by one (beyond, all are counted as ready)
DEPTH_SCAN_MAX = 10_000

# KEYS: arq queue, fair waiting set. ARGV: now ms, scan max. A running job stays in arq's
# queue until its end is written: those are not waiting (a long job made the oldest waiting
# age climb with its run time, and the backlog alert fire).
_DEPTH = """
local queue, waiting = KEYS[1], KEYS[2]
local now, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local total = redis.call('ZCOUNT', queue, '-inf', now)
local ready, oldest, seen, page = 0, nil, 0, 500
while seen < cap and seen < total do
  local ids = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'WITHSCORES', 'LIMIT', seen, page)
  for i = 1, #ids, 2 do
    if redis.call('EXISTS', 'arq:in-progress:' .. ids[i]) == 0 then
      ready = ready + 1
      if oldest == nil then oldest = ids[i + 1] end
    end
  end
  seen = seen + #ids / 2
  if #ids < page * 2 then break end
end
ready = ready + math.max(0, total - seen)
local fair_head = redis.call('ZRANGE', waiting, 0, 0, 'WITHSCORES')
return {ready, redis.call('ZCOUNT', queue, '(' .. now, '+inf'), redis.call('ZCARD', waiting),
        oldest or '', fair_head[2] or ''}
"""
_DEPTH_SHA = hashlib.sha1(_DEPTH.encode(), usedforsecurity=False).hexdigest()


async def depth(redis: Redis, queue: str) -> QueueDepth:
    """The depth of ``queue`` (one round trip)."""
    now = int(time.time() * 1000)
    args: list[Any] = [2, queue, fair_prefix(queue) + "waiting", now, DEPTH_SCAN_MAX]
    try:
        raw = await redis.evalsha(_DEPTH_SHA, *args)  # type: ignore[misc]
    except NoScriptError:
        raw = await redis.eval(_DEPTH, *args)  # type: ignore[misc]
    ready, deferred, fair, head, fair_head = raw
    oldest = [int(float(_text(v))) for v in (head, fair_head) if _text(v)]
    oldest = [v for v in oldest if v <= now]
    return QueueDepth(int(ready), int(deferred), int(fair), min(oldest) if oldest else None)


async def waiting_by_member(redis: Redis, queue: str, top: int = 20) -> list[dict[str, Any]]:
    """The members with the most waiting jobs (organization, function, priority, waiting)."""
    prefix = fair_prefix(queue)
    members: list[tuple[int, str]] = []
    for tier in range(len(PRIORITIES)):
        for raw in await redis.zrange(f"{prefix}ring:{tier}", 0, 999):
            members.append((tier, _text(raw)))
    if not members:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for tier, member in members:
            pipe.zcard(f"{prefix}q:{tier}:{member}")
        counts: Sequence[int] = await pipe.execute()
    rows: list[dict[str, Any]] = []
    for (tier, member), count in zip(members, counts, strict=True):
        org, _, function = member.partition("|")
        rows.append(
            {
                "org_id": None if org == "-" else org,
                "function": function,
                "priority": PRIORITIES[tier],
                "waiting": int(count),
            }
        )
    rows.sort(key=lambda r: -r["waiting"])
    return rows[:top]
