"""A circuit breaker per provider, decided in memory and shared by every llm process.

closed: calls pass; ``failures`` consecutive failures open it.
open: calls are refused (the router skips to the next target) for ``open_s`` seconds.
half-open: one trial call passes; success closes the breaker, failure opens it again.

:meth:`CircuitBreaker.allow` never leaves the process. What one process learns reaches
the others through Redis (:class:`SharedBreakers`), off the request path: a process that
opens a breaker sets ``llm:breaker:<provider>`` (expiring after ``open_s``) and announces
it on ``llm:breaker``; one whose half-open trial succeeded deletes the key and announces
that. Every process listens and applies what it hears, and reads the keys when it starts
(or reconnects), so a provider that is down costs ``failures`` calls in total, not per
process. Without Redis each process keeps deciding alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from enum import IntEnum
from typing import Any

import orjson
from redis.asyncio import Redis

from services.llm.metrics import BREAKER_STATE

log = logging.getLogger("aistack.llm.breaker")

KEY_PREFIX = "llm:breaker:"
CHANNEL = "llm:breaker"
_LOG_EVERY_S = 10.0


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


# told of the breaker's own transitions (not of ones heard from other processes):
# (breaker, opened) — opened True: it opened; False: a half-open trial closed it
Listener = Callable[["CircuitBreaker", bool], None]


class CircuitBreaker:
    def __init__(self, provider: str, *, failures: int = 5, open_s: float = 30.0) -> None:
        self.provider = provider
        self.threshold = max(failures, 1)
        self.open_s = open_s
        self.listener: Listener | None = None
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._gauge = BREAKER_STATE.labels(provider)
        self._gauge.set(State.CLOSED)

    @property
    def state(self) -> State:
        if self._state is State.OPEN and time.monotonic() - self._opened_at >= self.open_s:
            self._set(State.HALF_OPEN)
        return self._state

    def _set(self, state: State) -> None:
        self._state = state
        self._gauge.set(state)
        if state is not State.HALF_OPEN:
            self._trial_in_flight = False

    def allow(self) -> bool:
        """May a call go to this provider now? (In half-open, only one trial at a time.)"""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not State.CLOSED:
            trial = self._state is State.HALF_OPEN
            self._set(State.CLOSED)
            if trial and self.listener is not None:
                self.listener(self, False)

    def record_failure(self) -> None:
        self._failures += 1
        state = self.state
        if state is State.HALF_OPEN or self._failures >= self.threshold:
            self._opened_at = time.monotonic()
            self._set(State.OPEN)
            # a failure of a call sent before it opened only extends the cool-down here
            if state is not State.OPEN and self.listener is not None:
                self.listener(self, True)

    def release(self) -> None:
        """A call ended without telling anything about health (client error, cancel)."""
        self._trial_in_flight = False

    # what other processes found out (never announced again)

    def open_for(self, seconds: float) -> None:
        """Another process opened this provider's breaker: open here until ``seconds`` from now."""
        opened_at = time.monotonic() - max(0.0, self.open_s - seconds)
        if self._state is State.OPEN:
            self._opened_at = max(self._opened_at, opened_at)
        else:
            self._opened_at = opened_at
            self._set(State.OPEN)

    def close(self) -> None:
        """Another process's trial call succeeded: the provider answers again."""
        self._failures = 0
        if self._state is not State.CLOSED:
            self._set(State.CLOSED)


class SharedBreakers:
    """Shares the breakers' open and close transitions with every llm process via Redis.

    Nothing here runs on the request path: transitions are announced by background tasks,
    announcements are applied by one listening task (:meth:`start` / :meth:`stop`). Redis
    trouble is logged and retried; the breakers keep working locally meanwhile.
    """

    def __init__(
        self,
        breakers: dict[str, CircuitBreaker],
        redis: Redis,
        *,
        key_prefix: str = KEY_PREFIX,
        channel: str = CHANNEL,
        poll_s: float = 0.25,
    ) -> None:
        self.breakers = breakers
        self.redis = redis
        self.key_prefix = key_prefix
        self.channel = channel
        self.poll_s = poll_s
        # this process's announcements come back to it: recognised by this id and skipped
        self.origin = uuid.uuid4().hex
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._tried = asyncio.Event()  # set after the first attempt to load, failed or not
        self._sends: set[asyncio.Task[None]] = set()
        self._logged_at = float("-inf")
        for breaker in breakers.values():
            breaker.listener = self._changed

    def key(self, provider: str) -> str:
        return self.key_prefix + provider

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
        """Stop listening, after the announcements still being sent."""
        if self._sends:
            await asyncio.wait(list(self._sends), timeout=2.0)
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # rather than waiting out the current poll
            await asyncio.wait([task], timeout=2.0)

    # ------------------------------------------------------------------ announcing

    def _changed(self, breaker: CircuitBreaker, opened: bool) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (a breaker used outside the service): nothing to share
        self._spawn(loop, self._announce(breaker.provider, opened, breaker.open_s))

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> None:
        task = loop.create_task(coro)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

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
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if opened:
                    pipe.set(self.key(provider), self.origin, px=open_ms)
                else:
                    pipe.delete(self.key(provider))
                pipe.publish(self.channel, message)
                await pipe.execute()
        except Exception as exc:
            self._warn("could not share the breaker of %s (%s)", provider, exc)

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
                self._warn("breaker announcements unavailable (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _load(self) -> None:
        """Open the breakers whose keys are set (opened elsewhere, not yet expired)."""
        names = list(self.breakers)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.pttl(self.key(name))
            ttls = await pipe.execute()
        for name, ttl in zip(names, ttls, strict=True):
            if isinstance(ttl, int) and ttl > 0:
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

    def _warn(self, text: str, *args: Any) -> None:
        # Redis down: say so every few seconds, not on every attempt
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning(text, *args)
