"""A circuit breaker per provider, decided in memory and shared by every llm process.

closed: calls pass; ``failures`` consecutive failures open it.
open: calls are refused (the router skips to the next target) for ``open_s`` seconds.
half-open: one trial call passes; success closes the breaker, failure opens it again.

:meth:`CircuitBreaker.allow` never leaves the process. What one process learns reaches the
others through Redis (:class:`SharedBreakers`), in background tasks, off the request path:

- counting: a call that fails while closed also counts in ``llm:breaker:<provider>:failures``
  (INCR; the count expires ``count_window_s`` after the last failure, and a process that sees
  a success after its own failures deletes it). When that count reaches ``failures``, the
  process that counted last opens its breaker: a provider that is down costs ``failures``
  calls in total, not per process (the local count still opens it too, so never later).
- opening: the process that opens a breaker sets ``llm:breaker:<provider>`` (expiring after
  ``open_s``) and announces it on ``llm:breaker``; every process listens and opens too, and
  reads the keys when it starts (or reconnects).
- the trial: when the cool-down ends, only one process sends the trial call. The first call
  a process holds back in an open period asks for the trial; when the cool-down is over,
  the process claims it with ``SET llm:breaker:<provider> "trial <id>" NX PX open_s`` (the
  same key: it can only be claimed once the open key expired). The winner goes half-open;
  the others stay open until they hear the outcome (a success sets the key to "closed" for
  a moment and announces "closed"; a failure sets the key again and announces "open"), or
  until the claim expires (a winner that died, or got no call to send, costs one more
  cool-down) and a call of theirs asks again.

Without Redis (``LLM_BREAKER_SHARED`` off, or Redis failing) each process decides alone, as a
breaker without :attr:`CircuitBreaker.peers` does: its own count, its own trial. A Redis
error never fails a call; at worst a process decides alone for a while. Redis down or hung
(the client's guard, :mod:`libs.redis`, skipped it after one failed call anywhere in the
process) is the same: nothing is sent while it is, each write has the guard's short deadline,
and a hung Redis costs background writes a fraction of a second instead of the socket timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from enum import IntEnum
from typing import Any, Protocol, TypeVar

import orjson
from redis.asyncio import Redis

from libs.redis import guard_for
from services.llm.routing.metrics import BREAKER_STATE

log = logging.getLogger("aistack.llm.breaker")

KEY_PREFIX = "llm:breaker:"
FAILURES_SUFFIX = ":failures"
CHANNEL = "llm:breaker"
_LOG_EVERY_S = 10.0
T = TypeVar("T")
# after a Redis error, count and claim trials alone for this long (the listener ends it
# sooner when it reconnects)
_ALONE_S = 10.0
# a trial claim taking longer than this is given up: the process sends its own trial
_CLAIM_TIMEOUT_S = 1.0
# the key's value for this long after a successful trial: a claim sent before its sender
# heard of the success must not win (it would hold the trial of a closed breaker)
CLOSED_MARK = b"closed"
_CLOSED_GRACE_MS = 2000


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Peers(Protocol):
    """Who a breaker tells what it learns (:class:`SharedBreakers`). Every call returns at
    once; answers come back through the breaker's :meth:`~CircuitBreaker.trip`,
    :meth:`~CircuitBreaker.grant_trial` and :meth:`~CircuitBreaker.defer_trial`, with the
    ``cycle`` they were asked in (an answer about an older cycle is ignored)."""

    def failed(self, breaker: CircuitBreaker, cycle: int) -> None:
        """A call failed while closed, without opening the breaker here."""

    def recovered(self, breaker: CircuitBreaker) -> None:
        """A call succeeded after failures of this process: the count starts again."""

    def opened(self, breaker: CircuitBreaker) -> None:
        """The breaker opened here (failures, or a failed trial)."""

    def closed(self, breaker: CircuitBreaker) -> None:
        """This process's trial call succeeded."""

    def trial_wanted(self, breaker: CircuitBreaker, cycle: int) -> None:
        """A call is held back: may this process send the trial once the cool-down is over?
        (May answer before returning.)"""


class CircuitBreaker:
    def __init__(self, provider: str, *, failures: int = 5, open_s: float = 30.0) -> None:
        self.provider = provider
        self.threshold = max(failures, 1)
        self.open_s = open_s
        self.peers: Peers | None = None
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        # bumped by every open and close: what peers answer about an older cycle is void
        self._cycle = 0
        # with peers: when to ask for the trial next (0: at the first call held back; inf:
        # asked), and the cycle whose trial this process won
        self._ask_at = 0.0
        self._granted = -1
        self._gauge = BREAKER_STATE.labels(provider)
        self._gauge.set(State.CLOSED)

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._may_try():
            self._set(State.HALF_OPEN)
        return self._state

    @property
    def cycle(self) -> int:
        return self._cycle

    def cooldown_left(self) -> float:
        """Seconds until the cool-down of an open breaker is over (0: over)."""
        return max(0.0, self._opened_at + self.open_s - time.monotonic())

    def _may_try(self) -> bool:
        """Open, and the trial may go: cool-down over and (with peers) the trial is ours."""
        if time.monotonic() - self._opened_at < self.open_s:
            return False
        return self.peers is None or self._granted == self._cycle

    def _set(self, state: State) -> None:
        self._state = state
        self._gauge.set(state)
        if state is not State.HALF_OPEN:
            self._trial_in_flight = False

    def _open(self, opened_at: float) -> None:
        self._opened_at = opened_at
        self._cycle += 1
        self._ask_at = 0.0
        self._set(State.OPEN)

    def _close(self) -> None:
        self._failures = 0
        self._cycle += 1
        self._set(State.CLOSED)

    def allow(self) -> bool:
        """May a call go to this provider now? (In half-open, only one trial at a time.)"""
        state = self._state
        if state is State.CLOSED:
            return True
        if state is State.OPEN:
            if self.peers is not None and time.monotonic() >= self._ask_at:
                self._ask_at = math.inf
                self.peers.trial_wanted(self, self._cycle)
            if not self._may_try():
                return False
            self._set(State.HALF_OPEN)
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        if self._state is State.CLOSED:
            if self._failures:
                self._failures = 0
                if self.peers is not None:
                    self.peers.recovered(self)
            return
        # a trial, or a call sent before the breaker opened: the provider answers
        trial = self._state is State.HALF_OPEN
        self._close()
        if trial and self.peers is not None:
            self.peers.closed(self)

    def record_failure(self) -> None:
        self._failures += 1
        state = self.state
        if state is State.HALF_OPEN or self._failures >= self.threshold:
            # a failure of a call sent before it opened only extends the cool-down here
            self._open(time.monotonic())
            if state is not State.OPEN and self.peers is not None:
                self.peers.opened(self)
        elif state is State.CLOSED and self.peers is not None:
            self.peers.failed(self, self._cycle)

    def release(self) -> None:
        """A call ended without telling anything about health (client error, cancel)."""
        self._trial_in_flight = False

    # what the other processes found out (never announced again)

    def trip(self, cycle: int) -> None:
        """The failures of every process together reached the threshold: open, and say so."""
        if cycle == self._cycle and self._state is State.CLOSED:
            self._open(time.monotonic())
            if self.peers is not None:
                self.peers.opened(self)

    def grant_trial(self, cycle: int) -> None:
        """This process sends the trial of ``cycle`` (once its cool-down is over)."""
        if cycle == self._cycle:
            self._granted = cycle

    def defer_trial(self, cycle: int, seconds: float) -> None:
        """Another process has the trial (or the breaker is open elsewhere) for ``seconds``:
        ask again at the first call held back after that."""
        if cycle == self._cycle and self._state is State.OPEN:
            self._ask_at = time.monotonic() + seconds

    def open_for(self, seconds: float) -> None:
        """Another process opened this provider's breaker: open here until ``seconds`` from now."""
        opened_at = time.monotonic() - max(0.0, self.open_s - seconds)
        if self._state is State.OPEN:
            opened_at = max(self._opened_at, opened_at)
        self._open(opened_at)

    def close(self) -> None:
        """Another process's trial call succeeded: the provider answers again."""
        self._close()


class SharedBreakers:
    """Shares the breakers' failures, transitions and trials with every llm process via Redis
    (:class:`Peers` of every breaker; see the module docstring).

    Nothing here runs on the request path: Redis is written by background tasks (one
    process's writes about one provider in order), announcements are applied by one listening
    task (:meth:`start` / :meth:`stop`). Redis trouble is logged and retried; the breakers
    keep working locally meanwhile.
    """

    def __init__(
        self,
        breakers: dict[str, CircuitBreaker],
        redis: Redis,
        *,
        key_prefix: str = KEY_PREFIX,
        channel: str = CHANNEL,
        poll_s: float = 0.25,
        count_window_s: float = 60.0,
    ) -> None:
        self.breakers = breakers
        self.redis = redis
        self.guard = guard_for(redis)
        self.key_prefix = key_prefix
        self.channel = channel
        self.poll_s = poll_s
        self.count_window_ms = max(1, int(count_window_s * 1000))
        # this process's announcements come back to it: recognised by this id and skipped
        self.origin = uuid.uuid4().hex
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._tried = asyncio.Event()  # set after the first attempt to load, failed or not
        self._sends: set[asyncio.Task[None]] = set()
        self._claims: set[asyncio.Task[None]] = set()  # sleep until a cool-down ends
        self._order: dict[str, asyncio.Lock] = {}
        self._alone_until = 0.0  # after a Redis error: count and claim trials alone till then
        self._logged_at = float("-inf")
        for breaker in breakers.values():
            breaker.peers = self

    def key(self, provider: str) -> str:
        return self.key_prefix + provider

    def failures_key(self, provider: str) -> str:
        return self.key_prefix + provider + FAILURES_SUFFIX

    async def start(self, wait_s: float = 2.0) -> None:
        """Start listening, after reading the breakers other processes opened (waiting up to
        ``wait_s``; not at all when Redis cannot be reached)."""
        if self._task is not None or not self.breakers:
            return
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), wait_s)

    async def stop(self) -> None:
        """Stop listening, after the announcements still being sent (trial claims waiting for
        a cool-down to end are dropped)."""
        for claim in list(self._claims):
            claim.cancel()
        if self._sends:
            await asyncio.wait(list(self._sends), timeout=2.0)
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # rather than waiting out the current poll
            await asyncio.wait([task], timeout=2.0)

    # ------------------------------------------------------------------ Peers

    def failed(self, breaker: CircuitBreaker, cycle: int) -> None:
        if not self._alone():
            self._spawn(self._count_failure(breaker, cycle))

    def recovered(self, breaker: CircuitBreaker) -> None:
        if not self._alone():
            self._spawn(self._write(breaker.provider, self._reset_count))

    def opened(self, breaker: CircuitBreaker) -> None:
        self._spawn(self._announce(breaker.provider, True, breaker.open_s))

    def closed(self, breaker: CircuitBreaker) -> None:
        self._spawn(self._announce(breaker.provider, False, breaker.open_s))

    def trial_wanted(self, breaker: CircuitBreaker, cycle: int) -> None:
        if self._alone() or not self._spawn(self._claim_trial(breaker, cycle), self._claims):
            breaker.grant_trial(cycle)  # Redis failing, or no event loop: decide alone

    # ------------------------------------------------------------------ writing

    def _spawn(
        self, coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]] | None = None
    ) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a breaker used outside the service: nothing to share
            coro.close()
            return False
        task = loop.create_task(coro)
        group = self._sends if tasks is None else tasks
        group.add(task)
        task.add_done_callback(group.discard)
        return True

    async def _write(self, provider: str, write: Callable[[str], Awaitable[T]]) -> T | None:
        """Run ``write(provider)`` after this process's earlier writes about ``provider``;
        a Redis error is logged (and makes the process decide alone for a while)."""
        lock = self._order.setdefault(provider, asyncio.Lock())
        try:
            async with lock:
                return await self.guard.run("llm_breaker", write(provider))
        except Exception as exc:
            self._redis_failed("could not share the breaker of %s (%s)", provider, exc)
            return None

    async def _reset_count(self, provider: str) -> None:
        await self.redis.delete(self.failures_key(provider))

    async def _count_failure(self, breaker: CircuitBreaker, cycle: int) -> None:
        async def incr(provider: str) -> int:
            key = self.failures_key(provider)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.pexpire(key, self.count_window_ms)
                count, _ = await pipe.execute()
            return int(count)

        count = await self._write(breaker.provider, incr)
        if count is not None and count >= breaker.threshold:
            breaker.trip(cycle)

    async def _announce(self, provider: str, opened: bool, open_s: float) -> None:
        open_ms = max(1, int(open_s * 1000))
        message = orjson.dumps(
            {
                "provider": provider,
                "state": "open" if opened else "closed",
                "open_ms": open_ms,
                "origin": self.origin,
            }
        )

        async def send(provider: str) -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                if opened:  # also ends a trial claim: no claim until it expires
                    pipe.set(self.key(provider), self.origin, px=open_ms)
                else:  # no claim either until every process heard it closed
                    pipe.set(self.key(provider), CLOSED_MARK, px=_CLOSED_GRACE_MS)
                pipe.delete(self.failures_key(provider))  # the next count starts at 0
                pipe.publish(self.channel, message)
                await pipe.execute()

        await self._write(provider, send)

    async def _claim_trial(self, breaker: CircuitBreaker, cycle: int) -> None:
        """Once ``breaker``'s cool-down is over, claim its trial for this process: won, it
        goes half-open; lost to another claim, it asks again when that claim expires."""
        lease_ms = max(1, int(breaker.open_s * 1000))
        mine = f"trial {self.origin}".encode()

        async def claim(provider: str) -> tuple[bool, bytes | None, int]:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(self.key(provider), mine, nx=True, px=lease_ms)
                pipe.get(self.key(provider))
                pipe.pttl(self.key(provider))
                won, holder, ttl = await pipe.execute()
            return bool(won), holder, int(ttl)

        await asyncio.sleep(breaker.cooldown_left())
        while breaker.cycle == cycle:
            result = None
            if not self._alone():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_CLAIM_TIMEOUT_S):
                        result = await self._write(breaker.provider, claim)
                if result is None and not self._alone():
                    self._redis_failed("claiming the trial of %s timed out", breaker.provider)
            if result is None or result[0] or result[1] == mine:  # Redis failing: alone
                breaker.grant_trial(cycle)
                return
            _, holder, ttl = result
            if holder == CLOSED_MARK or (holder or b"").startswith(b"trial "):
                # another process's trial is under way, or closed it a moment ago
                breaker.defer_trial(cycle, ttl / 1000)
                return
            # still open as Redis sees it (the opener's cool-down ends a round trip before
            # the key it set expires): claim when it expires
            await asyncio.sleep(max(ttl, 1) / 1000)

    # ------------------------------------------------------------------ listening

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                # subscribed first: nothing announced while reading the keys is missed
                await self._load()
                self._tried.set()
                self._alone_until = 0.0
                backoff = 0.1
                # short polls rather than one blocking read, in case a read swallows the
                # cancellation at shutdown (the stop event ends the loop anyway)
                while not self._stop.is_set():
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.poll_s
                    )
                    if message is not None and message.get("type") == "message":
                        self._apply(message.get("data"))
            except Exception as exc:
                self._tried.set()
                self._redis_failed("breaker announcements unavailable (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):  # not wait_for (libs.redis.CancelSafeSend)
                    async with asyncio.timeout(backoff):
                        await self._stop.wait()
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _load(self) -> None:
        """Open the breakers whose keys other processes set (opened, or a trial under way)."""
        names = list(self.breakers)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(self.key(name))
                pipe.pttl(self.key(name))
            replies = await pipe.execute()
        origin = self.origin.encode()
        for name, holder, ttl in zip(names, replies[0::2], replies[1::2], strict=True):
            ours = isinstance(holder, bytes) and holder.endswith(origin)
            if isinstance(ttl, int) and ttl > 0 and not ours and holder != CLOSED_MARK:
                self.breakers[name].open_for(ttl / 1000)

    def _apply(self, data: Any) -> None:
        try:
            message = orjson.loads(data)
            if message["origin"] == self.origin:
                return
            breaker = self.breakers.get(message["provider"])
            if breaker is None:
                return
            if message["state"] == "open":
                breaker.open_for(float(message["open_ms"]) / 1000)
            elif message["state"] == "closed":
                breaker.close()
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed breaker announcement: %r", data)

    # ------------------------------------------------------------------ Redis trouble

    def _alone(self) -> bool:
        """Whether Redis failed lately: count and claim trials alone meanwhile."""
        return not self.guard.up or time.monotonic() < self._alone_until

    def _redis_failed(self, text: str, *args: Any) -> None:
        now = time.monotonic()
        self._alone_until = now + _ALONE_S
        # say so every few seconds, not on every attempt
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning(text, *args)
