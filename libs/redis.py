"""Redis client factory, the request dependency, and the guard that keeps a sick Redis off the
request path.

A Redis that is down answers at once (connection refused); one that hangs (stopped, swapping,
a network that drops packets) answers nothing, and a client waits its full socket timeout on
every call. The gateway makes up to three Redis calls per request and the llm service three
more, so a hung Redis used to add ~15 s to every request. :class:`RedisGuard` bounds that:

- request-path calls go through :meth:`RedisGuard.run`, which gives each call a short
  deadline (``timeout_s``, 250 ms by default: a healthy Redis answers in well under 1 ms, so
  only a sick one or a badly stalled process reaches it);
- the first call that fails or times out marks Redis down for the whole process (one guard
  per client, and a process has one client). While it is down, :meth:`RedisGuard.run`
  raises :class:`RedisUnavailable` at once, without touching the network: later requests do
  not each pay the deadline. Checking costs one attribute read (:attr:`RedisGuard.up`);
- one background probe PINGs Redis, at once and then every ``retry_s`` seconds (2 s by
  default), and marks it up when it answers. A stall of this process's own event loop (not
  of Redis) trips the guard too, but the immediate probe closes that window again within a
  round trip;
- opening and closing the window are logged (at most once per ``_LOG_EVERY_S`` each, with
  what was skipped meanwhile) and counted: ``aistack_redis_available``,
  ``aistack_redis_outages_total`` and ``aistack_redis_fallbacks_total{site}`` (calls that
  took their fallback instead of Redis, by call site).

What a call site does when Redis is unavailable (fail open, fail closed, skip) is decided
where it calls; every call site names its choice and the reason next to the call. Work off the
request path (usage events, pub/sub listeners) keeps the client's own 5 s socket timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.state import AppState

log = logging.getLogger("aistack.redis")

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 0.25
DEFAULT_RETRY_S = 2.0
# the probe waits longer than a request would: it decides for everyone, and is off the path
_PROBE_TIMEOUT_S = 1.0
_LOG_EVERY_S = 10.0
_GUARD_ATTR = "_aistack_guard"

AVAILABLE = Gauge(
    "aistack_redis_available",
    "1 while Redis is used on the request path, 0 while it is skipped (down or hung)",
    ["client"],
)
OUTAGES = Counter(
    "aistack_redis_outages_total",
    "Times Redis was found down or hung and skipped on the request path",
    ["client"],
)
FALLBACKS = Counter(
    "aistack_redis_fallbacks_total",
    "Request-path Redis calls that took their fallback (Redis down, hung or skipped), by site",
    ["client", "site"],
)

# what says "Redis is not answering" (a wrong command or a script error says it answers)
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    TimeoutError,
    OSError,
)


class RedisUnavailable(RedisConnectionError):
    """Redis was not asked (marked down) or did not answer in time; take the fallback."""


class RedisGuard:
    """Per-call deadlines and a shared "Redis is down" window for one client (see the
    module docstring). Create with :func:`guard_for`."""

    def __init__(
        self,
        redis: Redis,
        *,
        name: str = "default",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        self.redis = redis
        self.name = name
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        # read on every request-path call: a plain attribute, flipped only by failed() / _up()
        self.up = True
        self.down_since = 0.0
        self.skipped = 0  # calls that took their fallback in the current window
        self._probe: asyncio.Task[None] | None = None
        self._recovered: asyncio.Event | None = None
        self._closed = False
        self._logged_open = float("-inf")
        self._logged_close = float("-inf")
        self._quiet_opens = 0
        self._fallbacks: dict[str, Any] = {}
        self._gauge = AVAILABLE.labels(name)
        self._gauge.set(1)

    def configure(
        self,
        *,
        name: str | None = None,
        timeout_s: float | None = None,
        retry_s: float | None = None,
    ) -> RedisGuard:
        if name is not None and name != self.name:
            self.name = name
            self._fallbacks = {}
            self._gauge = AVAILABLE.labels(name)
            self._gauge.set(1 if self.up else 0)
        if timeout_s is not None:
            self.timeout_s = timeout_s
        if retry_s is not None:
            self.retry_s = retry_s
        return self

    async def run(self, site: str, call: Awaitable[T]) -> T:
        """Await ``call`` (a Redis command) within the deadline, unless Redis is down.

        Raises :class:`RedisUnavailable` when Redis is marked down (``call`` is not started),
        failed to connect or did not answer in time; other Redis errors (a bad command, a
        script error) propagate unchanged and do not mark it down.
        """
        if not self.up:
            _discard(call)
            self.fell_back(site)
            raise RedisUnavailable("Redis is marked unavailable")
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call
        except UNAVAILABLE_ERRORS as exc:
            if isinstance(exc, RedisUnavailable):
                raise
            self.failed(exc)
            self.fell_back(site)
            raise RedisUnavailable(f"Redis unavailable: {_describe(exc)}") from exc

    def fell_back(self, site: str) -> None:
        """Count one call of ``site`` that took its fallback."""
        self.skipped += 1
        child = self._fallbacks.get(site)
        if child is None:
            child = self._fallbacks[site] = FALLBACKS.labels(self.name, site)
        child.inc()

    def failed(self, exc: BaseException | None) -> None:
        """A call found Redis down or hung: skip it until the probe hears from it again."""
        if exc is not None and _own_pool_exhausted(exc):
            return  # our pool is busy, Redis is fine: not a reason to stop using it
        if not self.up or self._closed:
            return
        self.up = False
        self.down_since = time.monotonic()
        self.skipped = 0
        self._gauge.set(0)
        OUTAGES.labels(self.name).inc()
        now = time.monotonic()
        if now - self._logged_open >= _LOG_EVERY_S:
            self._logged_open = now
            extra = (
                f" (and {self._quiet_opens} more times since the last line)"
                if self._quiet_opens
                else ""
            )
            self._quiet_opens = 0
            log.error(
                "Redis unavailable (%s): skipped on the request path, probing every %.1fs%s",
                _describe(exc) if exc is not None else "unknown",
                self.retry_s,
                extra,
            )
        else:
            self._quiet_opens += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._probe is None or self._probe.done():
            self._probe = loop.create_task(self._probe_until_up())

    async def wait_up(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for Redis to be marked up again; whether it is."""
        if self.up:
            return True
        if self._recovered is None:
            self._recovered = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._recovered.wait()
        return self.up

    def stop(self) -> None:
        """The client is closing: end the probe."""
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

    async def _probe_until_up(self) -> None:
        delay = 0.0  # the first probe goes at once: a blip (or a stalled loop) ends quickly
        while not self._closed:
            if delay:
                await asyncio.sleep(delay)
            delay = self.retry_s
            try:
                async with asyncio.timeout(max(_PROBE_TIMEOUT_S, self.timeout_s)):
                    await self.redis.ping()
            except Exception:  # noqa: S112 - down still; the window stays open
                continue
            self._up()
            return

    def _up(self) -> None:
        down_for = time.monotonic() - self.down_since
        self.up = True
        self._gauge.set(1)
        now = time.monotonic()
        if now - self._logged_close >= _LOG_EVERY_S:
            self._logged_close = now
            log.warning(
                "Redis is back after %.1fs; %d request-path calls took their fallback meanwhile",
                down_for,
                self.skipped,
            )
        if self._recovered is not None:
            self._recovered.set()
            self._recovered = None


def _discard(call: Awaitable[Any]) -> None:
    if isinstance(call, Coroutine):
        call.close()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "no answer in time"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _own_pool_exhausted(exc: BaseException) -> bool:
    return isinstance(exc, RedisConnectionError) and str(exc) == "Too many connections"


def guard_for(redis: Redis) -> RedisGuard:
    """The guard of ``redis`` (one per client, created on first use)."""
    guard: RedisGuard | None = redis.__dict__.get(_GUARD_ATTR)
    if guard is None:
        guard = RedisGuard(redis)
        redis.__dict__[_GUARD_ATTR] = guard
    return guard


class CancelSafeSend(AbstractConnection):
    """Mixed into a pool's connection class: a command is sent under :func:`asyncio.timeout`,
    not :func:`asyncio.wait_for`.

    redis-py (5.x) bounds each send with ``asyncio.wait_for``, which on Python 3.11 loses a
    cancellation that arrives as the write completes (CPython gh-86296): the cancelled task
    carries on as if nothing happened. A task that sends commands in a loop (a worker's poll,
    a probe) then never stops; on this machine 79 of 200 cancellations of such a loop were
    lost. ``asyncio.timeout`` does not lose them. Errors are redis-py's own, as before.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.socket_timeout:
            return await super().send_packed_command(command, check_health)
        if not self.is_connected:
            await self.connect()
        elif check_health:
            await self.check_health()
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        writer = self._writer
        assert writer is not None
        try:
            async with asyncio.timeout(self.socket_timeout):
                writer.writelines(command)
                await writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            # a send cut short (cancelled) leaves the connection in an unknown state
            await self.disconnect(nowait=True)
            raise


_MIXED: dict[tuple[type, type[AbstractConnection]], type[AbstractConnection]] = {}


def mixed_in(mixin: type, cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """Connection class ``cls`` with ``mixin`` in front (one class per pair, made once)."""
    if issubclass(cls, mixin):
        return cls
    made = _MIXED.get((mixin, cls))
    if made is None:
        name = f"{mixin.__name__.lstrip('_')}{cls.__name__}"
        made = _MIXED[(mixin, cls)] = type(name, (mixin, cls), {})
    return made


def cancel_safe(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` with :class:`CancelSafeSend` mixed in."""
    return mixed_in(CancelSafeSend, cls)


class GuardedRedis(Redis):
    """A client whose guard's probe ends when the client closes."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        guard: RedisGuard | None = self.__dict__.get(_GUARD_ATTR)
        if guard is not None:
            guard.stop()
        await super().aclose(close_connection_pool)


def make_redis(url: str, *, max_connections: int = 50) -> Redis:
    """Create an async Redis client (connects lazily, on first command).

    The socket timeout (5 s) bounds work off the request path; request-path calls take the
    guard's much shorter deadline (:func:`guard_for`).
    """
    redis = GuardedRedis.from_url(
        url,
        max_connections=max_connections,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        decode_responses=False,
    )
    pool = redis.connection_pool
    pool.connection_class = cancel_safe(pool.connection_class)
    guard_for(redis)
    return redis


# async, like every dependency on a request path: FastAPI runs a plain ``def`` dependency in
# anyio's thread pool, a hop to a worker thread and back per request
async def get_redis(request: Request) -> Redis:
    """The app's shared Redis client."""
    return AppState.of(request).redis


RedisDep = Annotated[Redis, Depends(get_redis)]
