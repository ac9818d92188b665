"""The guard that keeps a hung PostgreSQL off the request path (like libs/redis.py's RedisGuard).

Every wait on PostgreSQL has a deadline (libs/db.py:make_engine), but while PostgreSQL is
hung every request that needs it still waits that deadline (10 s, up to ~20 s with the wait
for a pooled connection) before its 503, and under load requests pile up on the pool.
:class:`DatabaseGuard` (one per engine, so one per process and database) bounds that:

- the first statement, pre-ping or connect of the engine that runs out of its deadline
  (:func:`libs.storage_errors.database_timeout`) marks PostgreSQL down for the whole process;
- while it is down, taking a connection from the engine's pool raises
  :class:`DatabaseUnavailable` at once, without touching the network or a pooled connection:
  a ``ConnectionError``, so :func:`libs.storage_errors.outage_of` calls it a database outage
  (``503 service_unavailable`` with ``Retry-After`` on the request path; background loops
  retry it as they retry any outage). Checking costs one attribute read on each checkout;
- one background task probes PostgreSQL (``SELECT 1`` through the engine, within
  :data:`PROBE_TIMEOUT_S`), at once and then every ``retry_s`` seconds
  (``DB_GUARD_RETRY_SECONDS``), and marks it up when it answers. A statement that was only
  slow (a long query past its deadline, a stalled event loop) therefore closes the window
  again within a round trip. Nothing runs, and nothing is asked, while PostgreSQL is up;
- going down and coming back are logged once each (with how many checkouts were refused
  meanwhile) and counted: ``aistack_database_available`` and
  ``aistack_database_outages_total``, labelled with the engine's application name.

A refused connection is not a reason to mark it down: it fails at once anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection

from libs.settings import DB_GUARD_RETRY_S
from libs.storage_errors import database_timeout, describe

log = logging.getLogger("aistack.db")

DEFAULT_RETRY_S = DB_GUARD_RETRY_S
# the probe's own deadline: a healthy PostgreSQL answers SELECT 1 in well under a millisecond
PROBE_TIMEOUT_S = 1.5

AVAILABLE = Gauge(
    "aistack_database_available",
    "1 while PostgreSQL is used, 0 while it is skipped (hung: it did not answer in time)",
    ["engine"],
)
OUTAGES = Counter(
    "aistack_database_outages_total",
    "Times PostgreSQL was found hung and skipped until it answered again",
    ["engine"],
)

PROBE_TASK = "aistack-db-probe"
# set in the probe's task only: its checkouts go through while the guard is down
_PROBING: ContextVar[bool] = ContextVar("aistack_db_probing", default=False)


class DatabaseUnavailable(ConnectionError):
    """PostgreSQL is marked down (it did not answer within its deadline and has not answered
    the probe since): the connection was not even tried."""

    # the guard logs the outage once with how many it refused: no line per refused request
    logged_by_guard = True


class DatabaseGuard:
    """The "PostgreSQL is down" window of one engine (see the module docstring)."""

    def __init__(self, name: str, *, retry_s: float = DEFAULT_RETRY_S) -> None:
        self.name = name
        self.retry_s = retry_s
        # read on every checkout: a plain attribute, flipped only by failed() / _up()
        self.up = True
        self.down_since = 0.0
        self.refused = 0  # checkouts refused in the current window
        self.probes = 0  # probes run so far (tests: none while up)
        self.ping: Callable[[], Awaitable[Any]] | None = None
        self._probe: asyncio.Task[None] | None = None
        self._gauge = AVAILABLE.labels(name)
        self._gauge.set(1)

    def check(self) -> None:
        """Raise :class:`DatabaseUnavailable` while PostgreSQL is marked down."""
        if self.up or _PROBING.get():
            return
        self.refused += 1
        probe = self._probe
        if probe is None or probe.done() or probe.get_loop().is_closed():
            self._start_probe()  # its loop ended (tests: one loop per test), not in a service
        raise DatabaseUnavailable(
            "PostgreSQL is marked unavailable: it did not answer within the deadline "
            "(DB_COMMAND_TIMEOUT_SECONDS) and has not answered since "
            f"(probed every {self.retry_s:g}s)"
        )

    def observe(self, exc: BaseException | None) -> None:
        """An error met on a connection of the engine: a deadline passing marks it down."""
        if exc is not None and database_timeout(exc):
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        """PostgreSQL did not answer in time: refuse checkouts until the probe hears from it."""
        if not self.up or _PROBING.get():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to probe from: stay up (the deadlines still apply)
        self.up = False
        self.down_since = time.monotonic()
        self.refused = 0
        self._gauge.set(0)
        OUTAGES.labels(self.name).inc()
        log.warning(  # an outage, not a bug (as for every database outage: storage_errors)
            "PostgreSQL unavailable (%s): requests answer 503 at once, probing every %gs",
            describe(exc),
            self.retry_s,
        )
        if self._probe is None or self._probe.done():
            self._start_probe(loop)

    def _start_probe(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
        self._probe = loop.create_task(self._probe_until_up(), name=PROBE_TASK)

    def stop(self) -> None:
        """The engine is disposed: end the probe and start over (up) with the next pool."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if not self.up:
            self.up = True
            self._gauge.set(1)

    async def _probe_until_up(self) -> None:
        _PROBING.set(True)  # this task's context only
        delay = 0.0  # the first probe goes at once: a query that was only slow ends it quickly
        while not self.up:
            if delay:
                await asyncio.sleep(delay)
            delay = self.retry_s
            self.probes += 1
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    assert self.ping is not None
                    await self.ping()
            except Exception:  # noqa: S112 - still hung or down: the window stays open
                continue
            self._up()

    def _up(self) -> None:
        if self.up:
            return
        self.up = True
        self._gauge.set(1)
        log.warning(
            "PostgreSQL is back after %.1fs; %d connection checkouts were refused meanwhile",
            time.monotonic() - self.down_since,
            self.refused,
        )


class GuardedPool(AsyncAdaptedQueuePool):
    """The engine's pool: refuses checkouts at once while its guard has PostgreSQL down, and
    tells the guard of a pre-ping or connect that ran out of its deadline."""

    guard: DatabaseGuard | None = None
    # its log lines stay SQLAlchemy's pool's (the "sqlalchemy" logger: WARNING unless echo)
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"

    def connect(self) -> PoolProxiedConnection:
        guard = self.guard
        if guard is None:
            return super().connect()
        guard.check()
        try:
            return super().connect()
        except BaseException as exc:
            guard.observe(exc)
            raise

    def recreate(self) -> GuardedPool:
        # engine.dispose() replaces the pool with a fresh one: the same guard goes on
        pool = super().recreate()
        assert isinstance(pool, GuardedPool)
        pool.guard = self.guard
        return pool

    def dispose(self) -> None:
        if self.guard is not None:
            self.guard.stop()
        super().dispose()


def guard_of(engine: Any) -> DatabaseGuard | None:
    """The guard of an engine made by libs/db.py:make_engine (None for any other)."""
    sync = getattr(engine, "sync_engine", engine)
    pool = sync.pool
    return pool.guard if isinstance(pool, GuardedPool) else None
