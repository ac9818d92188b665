"""The ledger's consumer: reads the usage stream (``aistack:usage``) through a Redis consumer
group and records its events in batches (services/billing/usage/repository.py).

Each batch is one transaction; its entries are acknowledged and deleted from the stream
(XACK + XDEL, one round trip) only once it committed. A consumer that dies leaves its batch
pending; another claims it after ``claim_idle_ms`` (XAUTOCLAIM) and records it again, which
the ledger's unique key makes harmless. A batch PostgreSQL refuses while it answers is
recorded one event at a time: an event refused on its own (or one that is not a usage event)
is moved to the dead-letter stream ``aistack:usage:dead`` with the reason, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.db import session_scope
from libs.prices import PriceCatalogue
from libs.storage_errors import describe, outage_of
from libs.usage import USAGE_STREAM, UsageEvent
from services.billing.usage.partitions import Partitions, month_of
from services.billing.usage.repository import UsageRepository, priced_row
from services.billing.usage.thresholds import tell_thresholds

log = logging.getLogger("aistack.billing.ledger")

CONSUMER_GROUP = "billing-ledger"
DEAD_STREAM = f"{USAGE_STREAM}:dead"

Entry = tuple[Any, dict[Any, Any]]


@dataclass
class Parsed:
    """A batch read and prepared: entries already done, events with their ledger rows."""

    done: list[Any]
    events: list[tuple[Any, UsageEvent]]
    rows: list[dict[str, Any]]


class UsageConsumer:
    """Records the usage stream into the ledger, ``batch`` entries per transaction."""

    def __init__(
        self,
        redis: Redis,
        session_factory: async_sessionmaker[AsyncSession],
        prices: PriceCatalogue | None = None,
        *,
        consumer: str | None = None,
        batch: int = 5000,
        block_ms: int = 2000,
        claim_idle_ms: int = 60_000,
        thresholds: Sequence[int] = (),
    ) -> None:
        self.redis = redis
        self.session_factory = session_factory
        self.prices = prices
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.thresholds = tuple(thresholds)
        self.partitions = Partitions()
        self._group_ready = False
        self._own_checked = False

    async def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(USAGE_STREAM, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read(self, stream_id: str, block: int | None) -> list[Entry]:
        resp = await self.redis.xreadgroup(
            CONSUMER_GROUP, self.consumer, {USAGE_STREAM: stream_id}, count=self.batch, block=block
        )
        return [entry for _, entries in resp or [] for entry in entries]

    async def _claim(self) -> list[Entry]:
        """Entries a dead consumer left pending for ``claim_idle_ms``."""
        claimed = await self.redis.xautoclaim(
            USAGE_STREAM,
            CONSUMER_GROUP,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch,
        )
        return list(claimed[1])

    async def next_batch(self, block_ms: int | None) -> list[Entry]:
        """This consumer's own pending entries (after a restart under the same name), then
        entries claimed from a dead consumer, then new ones."""
        await self.ensure_group()
        entries: list[Entry] = []
        if not self._own_checked:
            entries = await self._read("0", None)
            self._own_checked = not entries
        if not entries:
            entries = await self._claim()
        if not entries:
            entries = await self._read(">", block_ms)
        return entries

    async def run_once(self, block_ms: int | None = None) -> int:
        """Record one batch; return how many entries it took off the stream."""
        return await self.record(await self._fetch(block_ms))

    async def _fetch(self, block_ms: int | None) -> list[Entry]:
        try:
            return await self.next_batch(block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("usage stream: the consumer group is gone (Redis lost its data)")
            self._group_ready = self._own_checked = False
            return []

    async def record(self, entries: list[Entry]) -> int:
        """Record entries read from the stream; return how many it took off the stream."""
        return await self._commit(await self._parse(entries))

    async def _parse(self, entries: list[Entry]) -> Parsed:
        """The usage events of the entries (validated, priced) and the entries done already
        (deleted meanwhile, or moved to the dead-letter stream)."""
        done: list[Any] = []
        events: list[tuple[Any, UsageEvent]] = []
        for entry_id, fields in entries:
            if not fields:  # deleted from the stream before this consumer acknowledged it
                done.append(entry_id)
                continue
            raw = fields.get(b"e", fields.get("e"))
            try:
                if raw is None:
                    raise ValueError("no field e")
                events.append((entry_id, UsageEvent.model_validate_json(raw)))
            except (ValueError, ValidationError) as exc:
                await self._dead(entry_id, fields, f"not a usage event: {exc}")
                done.append(entry_id)
        rows = [priced_row(e, self.prices) for _, e in events]
        return Parsed(done, events, rows)

    async def _commit(self, parsed: Parsed) -> int:
        done = list(parsed.done)
        if parsed.events:
            await self._record(parsed, done)
        await self._forget(done)
        if self.thresholds and parsed.events:
            orgs = {e.org_id for _, e in parsed.events}
            try:
                await tell_thresholds(self.redis, orgs, self.thresholds)
            except Exception as exc:  # the ledger never waits on a notification
                log.warning("budget thresholds not checked: %s", describe(exc))
        return len(done)

    async def _record(self, parsed: Parsed, done: list[Any]) -> None:
        events = parsed.events
        try:
            async with session_scope(self.session_factory) as session:
                await UsageRepository(session).insert_rows(
                    parsed.rows, {month_of(e.created_at) for _, e in events}, self.partitions
                )
        except Exception as exc:
            self.partitions.forget()
            if outage_of(exc) is not None:
                raise  # nothing acknowledged: the batch is recorded once PostgreSQL answers
            log.warning("a batch of %d usage events failed (%s); one at a time", len(events), exc)
            for entry_id, event in events:
                try:
                    async with session_scope(self.session_factory) as session:
                        await UsageRepository(session).record_many(
                            [event], prices=self.prices, partitions=self.partitions
                        )
                except Exception as one:
                    self.partitions.forget()
                    if outage_of(one) is not None:
                        raise
                    await self._dead(entry_id, {b"e": event.model_dump_json()}, str(one))
                done.append(entry_id)
            return
        done.extend(entry_id for entry_id, _ in events)

    async def _dead(self, entry_id: Any, fields: dict[Any, Any], reason: str) -> None:
        log.error("usage entry %r moved to %s: %s", entry_id, DEAD_STREAM, reason)
        await self.redis.xadd(DEAD_STREAM, {**fields, b"reason": reason[:2000]})

    async def _forget(self, done: list[Any]) -> None:
        if not done:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(USAGE_STREAM, CONSUMER_GROUP, *done)
            pipe.xdel(USAGE_STREAM, *done)
            await pipe.execute()

    async def backlog(self) -> int:
        """Entries on the stream not yet recorded (new and pending)."""
        return int(await self.redis.xlen(USAGE_STREAM))

    async def _pipelined(self) -> None:
        """Record batches while the next one is read and parsed: PostgreSQL writes one batch
        while this process prepares the next."""
        parsed = await self._parse(await self._fetch(self.block_ms))
        while True:
            if not parsed.done and not parsed.events:
                parsed = await self._parse(await self._fetch(self.block_ms))
                continue
            write = asyncio.ensure_future(self._commit(parsed))
            try:
                ahead = await self._parse(await self._fetch(None))
            except BaseException:
                await asyncio.gather(write, return_exceptions=True)
                self._own_checked = False  # what was read ahead is pending: read it again
                raise
            try:
                await write
            except BaseException:
                self._own_checked = False
                raise
            parsed = ahead

    async def run_forever(self) -> None:
        """Record batches until cancelled; an outage waits and tries again."""
        wait = 1.0
        while True:
            try:
                await self._pipelined()
                wait = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                dependency = outage_of(exc)
                if dependency is None:
                    log.exception("usage consumer failed; again in %.0f s", wait)
                else:
                    log.warning(
                        "usage consumer: %s unavailable (%s); again in %.0f s",
                        dependency,
                        describe(exc),
                        wait,
                    )
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30.0)
