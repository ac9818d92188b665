"""The recorder: folds the lifecycle events of every service's jobs (the stream
``aistack:job-events``) into ``jobs.jobs`` through a Redis consumer group."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.queue import EVENTS_STREAM, JobEvent
from libs.queue.types import Record, records
from libs.storage_errors import outage_of
from services.jobs.jobs.repository import JobRepository
from services.jobs.types.repository import JobTypeRepository

log = logging.getLogger("aistack.jobs")

CONSUMER_GROUP = "jobs-recorder"


class RecordPolicies:
    """How much each job type is recorded (its declaration's ``record``: ``all``, ``failures``
    or a share), from ``jobs.job_types``, read again every ``refresh_s``. A type no worker
    declared yet is recorded in full."""

    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], refresh_s: float = 30.0
    ) -> None:
        self.session_factory = session_factory
        self.refresh_s = refresh_s
        self._policies: dict[tuple[str, str], Record] = {}
        self._loaded = -math.inf

    async def records(self, ev: JobEvent) -> bool:
        if time.monotonic() - self._loaded >= self.refresh_s:
            self._loaded = time.monotonic()
            try:
                async with self.session_factory() as session:
                    rows = await JobTypeRepository(session).all()
            except Exception as exc:  # the previous policies stay until the next read
                log.debug("job types not read (%s)", exc)
            else:
                self._policies = {
                    (r.service, r.name): (r.spec or {}).get("record", "all") for r in rows
                }
        policy = self._policies.get((ev.service, ev.function), "all")
        return policy == "all" or records(policy, ev.job_id, failed=ev.status in ("failed", "dead"))


class EventConsumer:
    """Folds ``aistack:job-events`` into ``jobs.jobs`` through a Redis consumer group.

    The group starts at the beginning of the stream, so events sent while the jobs service
    was down (or before it ever ran) are applied when it comes back; a dead consumer's
    pending events are claimed after ``claim_idle_ms``. Applying an event twice or out of
    order is harmless.

    Each read batch (up to ``batch`` entries) is applied in one transaction and acknowledged
    with one XACK once it committed. If that transaction fails while PostgreSQL answers, the
    batch is applied again one event per transaction: an event PostgreSQL keeps refusing (a
    "poison" event) is logged and left pending, the others are applied and acknowledged.
    The poison event is tried again every ``poison_retry_ms`` (meanwhile this consumer reads
    past it) until it applies or the stream is trimmed past it (then it is acknowledged).
    """

    def __init__(
        self,
        redis: Redis,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        consumer: str | None = None,
        batch: int = 100,
        block_ms: int = 5000,
        claim_idle_ms: int = 60_000,
        poison_retry_ms: int = 60_000,
    ) -> None:
        self.redis = redis
        self.session_factory = session_factory
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.poison_retry_ms = poison_retry_ms
        self._group_ready = False
        # pending entries that failed on their own: entry id -> (retry at (monotonic), failures)
        self._parked: dict[Any, tuple[float, int]] = {}
        self.policies = RecordPolicies(session_factory)

    async def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(EVENTS_STREAM, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read(self, stream_id: str, block: int | None) -> list[tuple[Any, Any]]:
        resp = await self.redis.xreadgroup(
            CONSUMER_GROUP, self.consumer, {EVENTS_STREAM: stream_id}, count=self.batch, block=block
        )
        return [entry for _, entries in resp or [] for entry in entries if entry[1]]

    async def _own_pending(self) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
        """This consumer's pending entries: (not parked, parked and due for another try).

        An entry trimmed from the stream comes back with no fields.
        """
        now = time.monotonic()
        cursor = "0"
        fresh: list[tuple[Any, Any]] = []
        retry: list[tuple[Any, Any]] = []
        while True:
            resp = await self.redis.xreadgroup(
                CONSUMER_GROUP, self.consumer, {EVENTS_STREAM: cursor}, count=self.batch
            )
            page = [entry for _, entries in resp or [] for entry in entries]
            if cursor == "0" and len(page) < self.batch:
                # the whole pending list: forget parked entries no longer in it
                ids = {e[0] for e in page}
                self._parked = {k: v for k, v in self._parked.items() if k in ids}
            for entry in page:
                parked = self._parked.get(entry[0])
                if parked is None or not entry[1]:
                    fresh.append(entry)
                elif parked[0] <= now and len(retry) < self.batch:
                    retry.append(entry)
            if fresh or len(page) < self.batch:
                return fresh, retry
            cursor = page[-1][0]

    async def _claim(self) -> list[tuple[Any, Any]]:
        """Entries another (dead) consumer left pending for ``claim_idle_ms``."""
        claimed = await self.redis.xautoclaim(
            EVENTS_STREAM,
            CONSUMER_GROUP,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch,
        )
        # a trimmed entry comes back as (None, None): it is ours now, _own_pending acks it;
        # our own parked entries are retried from _own_pending
        return [e for e in claimed[1] if e[1] and e[0] not in self._parked]

    async def run_once(self, block_ms: int | None = None) -> int:
        """Apply one batch (own pending first, then claimed, then new); return events applied.

        Parked (poison) entries due for another try go along with that batch, applied on
        their own, so they never hold back the entries behind them.
        """
        return (await self._run_batch(block_ms))[1]

    async def _run_batch(self, block_ms: int | None) -> tuple[int, int]:
        """One batch: (entries acknowledged, events applied)."""
        await self.ensure_group()
        try:
            entries, retry = await self._own_pending()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the stream and its group (restarted empty, FLUSHALL): start again
            log.warning("job events: the consumer group is gone (Redis lost its data); again")
            self._group_ready = False
            self._parked.clear()
            await self.ensure_group()
            entries, retry = await self._own_pending()
        if not entries:
            entries = await self._claim()
        if not entries:
            entries = await self._read(">", None if retry else block_ms)
        done: list[Any] = []  # acknowledged in one XACK at the end
        events: list[tuple[Any, JobEvent]] = []
        for entry_id, fields in entries:
            if not fields:
                log.warning(
                    "job event %r was trimmed from the stream before it was applied", entry_id
                )
                self._parked.pop(entry_id, None)
                done.append(entry_id)
                continue
            try:
                ev = JobEvent.from_fields(fields)
            except ValueError:
                log.warning("dropping malformed job event %r", entry_id)
                done.append(entry_id)
                continue
            if await self.policies.records(ev):
                events.append((entry_id, ev))
            else:
                done.append(entry_id)  # a job its type records only when it fails
        retries = [(entry_id, JobEvent.from_fields(fields)) for entry_id, fields in retry]
        applied = 0
        try:
            if events:
                applied = await self._apply(events, done)
            if retries:
                applied += await self._apply_one_by_one(retries, done)
        finally:
            # not acknowledged on failure: an event stays pending and is retried
            if done:
                await self.redis.xack(EVENTS_STREAM, CONSUMER_GROUP, *done)
        return len(done), applied

    async def _apply(self, events: list[tuple[Any, JobEvent]], done: list[Any]) -> int:
        try:
            async with session_scope(self.session_factory) as session:
                await JobRepository(session).apply_events([ev for _, ev in events])
        except Exception as exc:
            if outage_of(exc) is not None:
                raise
            log.warning(
                "a batch of %d job events failed (%s); applying them one at a time",
                len(events),
                _reason(exc),
            )
            return await self._apply_one_by_one(events, done)
        for entry_id, _ in events:
            self._parked.pop(entry_id, None)
            done.append(entry_id)
        return len(events)

    async def _apply_one_by_one(self, events: list[tuple[Any, JobEvent]], done: list[Any]) -> int:
        applied = 0
        for entry_id, ev in events:
            try:
                async with session_scope(self.session_factory) as session:
                    await JobRepository(session).apply_event(ev)
            except Exception as exc:
                if outage_of(exc) is not None or not await self._database_answers():
                    raise  # PostgreSQL is the problem, not the event: retry the lot later
                self._park(entry_id, ev, exc)
                continue
            self._parked.pop(entry_id, None)
            done.append(entry_id)
            applied += 1
        return applied

    def _park(self, entry_id: Any, ev: JobEvent, exc: Exception) -> None:
        failures = self._parked.get(entry_id, (0.0, 0))[1] + 1
        self._parked[entry_id] = (time.monotonic() + self.poison_retry_ms / 1000, failures)
        log.error(
            "job event %r (%s of job %s) cannot be applied (%s); left pending, tried again in %ds"
            " (failure %d)",
            entry_id,
            ev.status,
            ev.job_id,
            _reason(exc),
            self.poison_retry_ms // 1000,
            failures,
            extra={"job_id": ev.job_id, "stream_entry": str(entry_id), "failures": failures},
        )

    async def _database_answers(self) -> bool:
        try:
            async with self.session_factory() as session:
                await session.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def drain(self) -> int:
        """Apply everything available now (tests, one-off catch-up); return events applied.

        Stops at a batch where nothing could be acknowledged (only poison events were left).
        """
        total = 0
        while True:
            acked, applied = await self._run_batch(None)
            total += applied
            if not acked:
                return total

    async def run_forever(self) -> None:
        """Loop until cancelled; back off on errors (Redis or Postgres down)."""
        delay = 0.5
        while True:
            try:
                await self.run_once(block_ms=self.block_ms)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                dependency = outage_of(exc)
                if dependency is not None:
                    # an outage, not a bug: one line per try (backing off), no traceback
                    log.warning(
                        "job events consumer: %s unreachable (%s); retrying in %.1fs",
                        "Redis" if dependency == "redis" else "PostgreSQL",
                        _reason(exc),
                        delay,
                    )
                else:
                    log.exception("job events consumer failed; retrying in %.1fs", delay)
                self._group_ready = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)


def _reason(exc: BaseException) -> str:
    """An error's first line, without SQLAlchemy's statement dump."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig or exc).splitlines()[0] if str(orig or exc) else type(exc).__name__
    return text_.rsplit(">: ", 1)[-1][:300]
