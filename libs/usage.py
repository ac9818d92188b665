"""The usage event contract: what any service sends to billing for every metered request.

One event per (``request_id``, ``kind``); billing stores it at most once, so a producer may
send the same event again (retries, at-least-once delivery, an outbox replayed twice) without
double counting. An event is immutable once built: its ``created_at`` is set by the producer
and travels unchanged through retries and replays (billing's ledger key is the request id,
the kind and that time; see ``services/billing/usage/repository.py``).

Events travel on one Redis stream, :data:`USAGE_STREAM`, one entry per event (its JSON in
field ``e``, the producing request's id in ``rid``), read in batches by billing's worker
through a consumer group (``services/billing/usage/consumer.py``). No job per event: the
jobs service never sees usage.

A producer sends through :class:`UsageSender`: batched off the request path (one pipelined
round trip per batch), retried for as long as Redis is unreachable, and parked in its own
PostgreSQL table (:class:`UsageOutbox`; the service's ``models.py`` declares it with
:class:`libs.usage_table.UsageOutboxTable`) when too many wait or the process stops, to be
sent once Redis answers again (by the process, and by the service's worker:
:func:`replay_outbox_forever`). A producer without a sender (a worker, a one-off) calls
:func:`publish_usage`, after its transaction commits when it has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, get_args

import orjson
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from libs.context import get_request_id
from libs.storage_errors import describe, outage_of

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from libs.db import SessionFactory

log = logging.getLogger("aistack.usage")

BILLING_SERVICE = "billing"
# the stream billing's worker reads (consumer group ``billing-ledger``); never trimmed by
# producers: billing deletes what it has recorded
USAGE_STREAM = "aistack:usage"
# the arq job usage events were sent as before the stream (billing still runs what an older
# producer queued; the jobs service keeps such records out of users' lists)
RECORD_USAGE = "record_usage"


def _now() -> datetime:
    return datetime.now(UTC)


# what a usage event meters; billing keeps it as a string of at most 16 characters. chat and
# embedding: the llm's calls (its /v1/completions and /v1/responses are chat calls, one event
# each); completion and response: reserved for those routes metered apart; batch: one line of
# a Batch API job (jobs; an llm call made for a batch line may instead keep its kind and set
# ``batch``); storage: bytes kept by files and vector stores, one sample per organization and
# day (rag, :func:`storage_sample`). Add kinds, never rename.
UsageKind = Literal["chat", "embedding", "completion", "response", "batch", "storage"]
USAGE_KINDS: tuple[str, ...] = get_args(UsageKind)

# fields added after the first version of the contract: sent only when they hold something,
# so the wire format of an event that does not use them is what it always was
_LATER_FIELDS = ("cached_tokens", "batch", "storage_bytes")


class UsageEvent(BaseModel):
    """One metered request (a chat completion, an embeddings call, a batch line, ...)."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1, max_length=128, description="Unique per request")
    org_id: uuid.UUID
    user_id: uuid.UUID | None = None
    key_id: uuid.UUID | None = None
    model: str = Field(max_length=200)
    provider: str = Field(max_length=64)
    kind: UsageKind = "chat"
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    # what the producer priced it at (its own configuration); billing prices the event from
    # its catalogue at the event's time and keeps this only for models the catalogue lacks
    cost_usd: Decimal = Field(default=Decimal(0), ge=0, max_digits=18, decimal_places=8)
    latency_ms: int = Field(default=0, ge=0)
    ttft_ms: int | None = Field(default=None, ge=0, description="Time to first token (streams)")
    cached: bool = False
    status: Literal["ok", "error", "cancelled"] = Field(
        default="ok",
        description="ok; error (nothing charged); cancelled: a stream the client left early,"
        " with the tokens streamed until then",
    )
    created_at: datetime = Field(default_factory=_now)
    prompt_version_id: str | None = Field(
        default=None, max_length=64, description="The stored prompt version that served it"
    )
    cached_tokens: int = Field(
        default=0, ge=0, description="Of prompt_tokens, read from the provider's prompt cache"
    )
    batch: bool = Field(default=False, description="Made for a Batch API line (batch price)")
    storage_bytes: int = Field(default=0, ge=0, description="kind storage: bytes kept")

    @property
    def key(self) -> str:
        """The event's identity on the wire and in outboxes: ``usage:<kind>:<request_id>``."""
        return f"usage:{self.kind}:{self.request_id}"

    @property
    def job_id(self) -> str:
        """The same as :attr:`key` (the name it had when events were queue jobs)."""
        return self.key

    def payload(self) -> dict[str, Any]:
        """JSON-safe dict of the event (Decimal as a string, exact)."""
        data = self.model_dump(mode="json")
        for name in _LATER_FIELDS:
            if not data[name]:
                del data[name]
        return data


def storage_sample(org_id: uuid.UUID, stored_bytes: int, day: date, service: str) -> UsageEvent:
    """The daily storage sample of an organization: ``stored_bytes`` kept on ``day`` (UTC).

    One per organization and day (its request id names both), so sampling again the same day
    is a duplicate billing ignores; send it with :func:`publish_usage` or a sender.
    """
    return UsageEvent(
        request_id=f"storage:{org_id}:{day.isoformat()}",
        org_id=org_id,
        model="storage",
        provider=service,
        kind="storage",
        storage_bytes=stored_bytes,
        created_at=datetime(day.year, day.month, day.day, tzinfo=UTC),
    )


@dataclass(slots=True)
class UsageMessage:
    """A usage event captured where it happened (with that request's id), ready to send."""

    key: str
    event: dict[str, Any]
    request_id: str | None = None

    def fields(self) -> dict[str, bytes]:
        """The stream entry's fields."""
        out = {"e": orjson.dumps(self.event)}
        if self.request_id:
            out["rid"] = self.request_id.encode()
        return out

    def to_json(self) -> str:
        return orjson.dumps(
            {"key": self.key, "event": self.event, "request_id": self.request_id}
        ).decode()


def prepare_usage(event: UsageEvent) -> UsageMessage:
    """Capture a usage event where it happens (request id) to send later, in a batch."""
    return UsageMessage(event.key, event.payload(), get_request_id())


def message_from_json(raw: Any) -> UsageMessage:
    """A message back from its outbox JSON (text or already decoded); rows an older version
    left (a queue job: the event is its first argument) are read too."""
    data = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    if "event" in data:
        return UsageMessage(data["key"], data["event"], data.get("request_id"))
    event = data["args"][0]
    meta = data.get("meta") or {}
    key = f"usage:{event.get('kind', 'chat')}:{event['request_id']}"
    return UsageMessage(key, event, meta.get("request_id"))


async def publish_usage_batch(messages: Sequence[UsageMessage], redis: Redis) -> None:
    """Send prepared usage events now, in one pipelined round trip (no transaction: a batch
    cut short is sent again whole, and billing ignores what it already has)."""
    if not messages:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for message in messages:
            pipe.xadd(USAGE_STREAM, message.fields())  # type: ignore[arg-type]
        await pipe.execute()


async def publish_usage(
    event: UsageEvent, redis: Redis, session: AsyncSession | None = None
) -> None:
    """Send a usage event to billing: after ``session`` commits when given, else now."""
    message = prepare_usage(event)
    if session is None:
        await publish_usage_batch([message], redis)
        return
    from libs.db import after_commit

    async def send() -> None:
        await publish_usage_batch([message], redis)

    after_commit(session, send)


# ---------------------------------------------------------------------------------------------
# durable sending: memory, then the service's outbox table, never dropped


USAGE_PENDING = Gauge(
    "aistack_usage_events_pending",
    "Usage events not yet on the usage stream, by where they wait: memory (this process, "
    "Redis unreachable or a batch in flight) or outbox (the service's PostgreSQL table, "
    "as last counted by this process)",
    ["service", "store"],
)
USAGE_LOST = Counter(
    "aistack_usage_events_lost_total",
    "Usage events dropped: neither Redis nor the outbox table took them at shutdown",
    ["service"],
)

OUTBOX_TABLE = "usage_outbox"


class UsageOutbox:
    """Usage events parked in the service's PostgreSQL table ``<schema>.usage_outbox``.

    Written when Redis stays unreachable (too many events waiting, or the process stopping);
    :meth:`replay` moves them to the usage stream once Redis answers. Rows are claimed with
    ``FOR UPDATE SKIP LOCKED`` and deleted in the transaction that sent them, so several
    processes may replay at once; a replay cut short sends some again, which billing's ledger
    ignores. SQLAlchemy loads only when the table is first used.
    """

    def __init__(self, schema: str, sessions: Callable[[], SessionFactory | None]) -> None:
        self.schema = schema
        self.sessions = sessions

    def _factory(self) -> SessionFactory:
        factory = self.sessions()
        if factory is None:
            raise RuntimeError("no database session factory for the usage outbox")
        return factory

    async def put(self, messages: Sequence[UsageMessage]) -> None:
        """Store events (one already stored is kept as it is)."""
        if not messages:
            return
        from sqlalchemy import text

        stmt = text(
            f"INSERT INTO {self.schema}.{OUTBOX_TABLE} (job_id, job) "  # noqa: S608 - our schema
            "VALUES (:job_id, CAST(:job AS jsonb)) ON CONFLICT (job_id) DO NOTHING"
        )
        async with self._factory()() as session:
            for i in range(0, len(messages), OUTBOX_CHUNK):
                chunk = messages[i : i + OUTBOX_CHUNK]
                await session.execute(stmt, [{"job_id": m.key, "job": m.to_json()} for m in chunk])
            await session.commit()

    async def count(self) -> int:
        """How many events wait in the table."""
        from sqlalchemy import text

        async with self._factory()() as session:
            stmt = text(f"SELECT count(*) FROM {self.schema}.{OUTBOX_TABLE}")  # noqa: S608
            return int(await session.scalar(stmt) or 0)

    async def replay(self, redis: Redis, *, batch: int = 200) -> int:
        """Send stored events to billing until the table is empty; return how many were sent.

        Raises when Redis or PostgreSQL fails; what was not sent stays in the table.
        """
        from sqlalchemy import text

        claim = text(
            f"DELETE FROM {self.schema}.{OUTBOX_TABLE} WHERE job_id IN "  # noqa: S608
            f"(SELECT job_id FROM {self.schema}.{OUTBOX_TABLE} ORDER BY created_at, job_id "
            "LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING job"
        )
        sent = 0
        while True:
            async with self._factory()() as session:
                rows = (await session.execute(claim, {"n": batch})).scalars().all()
                if not rows:
                    return sent
                # sent before the delete commits: a failure here rolls the delete back
                await publish_usage_batch([message_from_json(r) for r in rows], redis)
                await session.commit()
            sent += len(rows)
            if len(rows) < batch:
                return sent


OUTBOX_CHUNK = 1000
# how often a service's worker looks for events a stopped process left in its outbox table
REPLAY_INTERVAL_S = 10.0


async def replay_outbox_forever(
    outbox: UsageOutbox, redis: Redis, interval_s: float = REPLAY_INTERVAL_S
) -> None:
    """A service worker's loop: send what ``outbox`` holds (rows a process left when it
    stopped during a Redis outage), then again every ``interval_s``. A loop rather than a cron
    job: an idle table costs one SELECT per interval and no queue traffic. A failed round
    (PostgreSQL or Redis unreachable: one line; anything else: its traceback) waits for the
    next."""
    while True:
        try:
            sent = await outbox.replay(redis)
            if sent:
                log.info("%d usage events replayed from the %s outbox table", sent, outbox.schema)
            USAGE_PENDING.labels(outbox.schema, "outbox").set(await outbox.count())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            dependency = outage_of(exc)
            if dependency is not None:
                log.warning(
                    "usage outbox replay failed: %s unavailable (%s); next try in %.0f s",
                    dependency,
                    describe(exc),
                    interval_s,
                )
            else:
                log.warning(
                    "usage outbox replay failed; next try in %.0f s", interval_s, exc_info=exc
                )
        await asyncio.sleep(interval_s)


# how long the sender waits after the first event before sending
LINGER_S = 0.005


class UsageSender:
    """Sends usage events to billing in batches, and never drops one while it can keep it.

    :meth:`add` (the request path) only appends to a list; one task at a time sends what
    waits, many events per Redis round trip. While Redis is unreachable the task retries with
    capped exponential backoff; when more than ``max_pending`` events wait in memory they move
    to the ``outbox`` table, and :meth:`close` (graceful shutdown) moves whatever still waits
    there. Once Redis answers again the outbox is replayed by the task (and by the service's
    worker, for rows a stopped process left behind).
    """

    def __init__(
        self,
        service: str,
        redis: Callable[[], Redis],
        *,
        outbox: UsageOutbox | None = None,
        max_pending: int = 10_000,
        batch: int = 200,
        retry_min_s: float = 0.2,
        retry_max_s: float = 5.0,
        close_timeout_s: float = 5.0,
    ) -> None:
        self.service = service
        self.redis = redis
        self.outbox = outbox
        self.max_pending = max_pending
        self.batch = batch
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.close_timeout_s = close_timeout_s
        self._pending: list[UsageMessage] = []
        # events given to add_event whose preparation has not run yet
        self._scheduled = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()
        # rows this process put in the outbox that it has not seen replayed yet
        self._outbox_dirty = False
        self._replay_at = 0.0
        self._replay_delay = retry_min_s
        self._down_since: float | None = None
        self._last_report = 0.0
        ref = weakref.ref(self)
        USAGE_PENDING.labels(service, "memory").set_function(
            lambda: float(len(sender._pending)) if (sender := ref()) is not None else 0.0
        )

    @property
    def pending(self) -> int:
        """Events waiting in this process's memory."""
        return len(self._pending)

    @property
    def busy(self) -> bool:
        """Whether events wait to be prepared, or the sending task is running (events or
        outbox rows to send)."""
        return bool(self._scheduled) or self._task is not None

    def add(self, message: UsageMessage) -> None:
        """Queue one prepared usage event (no I/O here; sent by the background task)."""
        self._pending.append(message)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def add_event(self, event: UsageEvent) -> None:
        """Queue ``event``, prepared (:func:`prepare_usage`: its JSON and request id) right
        after the current step of the event loop rather than now.

        The request path calls this just before it writes its answer, which happens in the
        same step: preparing the event then waits until the answer is on its way. The
        callback runs in a copy of the caller's context, so it records the same request id as
        it would have here.
        """
        self._scheduled += 1
        asyncio.get_running_loop().call_soon(self._prepare_and_add, event)

    def _prepare_and_add(self, event: UsageEvent) -> None:
        self._scheduled -= 1
        try:
            message = prepare_usage(event)
        except Exception:  # a bug; never a reason to lose the event silently
            USAGE_LOST.labels(self.service).inc()
            log.exception("usage event %s could not be prepared: %s", event.key, event)
            return
        self.add(message)

    async def drain(self) -> None:
        """Wait until nothing waits in memory or this process's outbox rows (tests)."""
        while self._scheduled or self._task is not None:
            if self._task is None:
                await asyncio.sleep(0)  # add_event's preparation runs
            else:
                await asyncio.shield(self._task)

    async def close(self) -> None:
        """Stop retrying: send what waits once more, else park it in the outbox."""
        if self._scheduled:
            # one step: the callbacks add_event scheduled run before this task resumes
            await asyncio.sleep(0)
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.close_timeout_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pending:
            # the task was cut off mid-send (a hung Redis): keep what it held
            await self._spill(final=True)

    # -------------------------------------------------------------------------------- task

    async def _run(self) -> None:
        delay = self.retry_min_s
        # a moment for the events of other calls to join the batch, and for the answer that
        # produced this one to leave first (at low concurrency the send then competes with
        # nobody's response for the CPU)
        try:
            await asyncio.sleep(LINGER_S)
            while self._pending or self._replay_wanted():
                if self._pending:
                    batch = self._pending[: self.batch]
                    try:
                        await publish_usage_batch(batch, self.redis())
                    except Exception as exc:
                        self._report_down(exc)
                        if self._closing:
                            await self._spill(final=True)
                            return
                        if len(self._pending) > self.max_pending:
                            await self._spill(final=False)
                        await self._sleep(delay)
                        delay = min(delay * 2, self.retry_max_s)
                        continue
                    del self._pending[: len(batch)]
                    delay = self.retry_min_s
                    self._report_up()
                if self._replay_wanted():
                    if not self._pending:
                        await self._sleep(self._replay_at - time.monotonic())
                    if self._replay_wanted() and time.monotonic() >= self._replay_at:
                        await self._replay()
        finally:
            self._task = None

    def _replay_wanted(self) -> bool:
        return self._outbox_dirty and not self._closing and self.outbox is not None

    async def _replay(self) -> None:
        """Send the outbox's events; on failure try again later (backoff of its own)."""
        assert self.outbox is not None
        try:
            sent = await self.outbox.replay(self.redis())
        except Exception as exc:
            self._report_down(exc)
            self._replay_at = time.monotonic() + self._replay_delay
            self._replay_delay = min(self._replay_delay * 2, self.retry_max_s)
            return
        self._outbox_dirty = False
        self._replay_delay = self.retry_min_s
        self._report_up()
        log.info("%d usage events replayed from the %s outbox table", sent, self.service)
        await self._count_outbox()

    async def _sleep(self, delay: float) -> None:
        self._wake.clear()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
        # lands as the event is set, and this task is cancelled to stop it
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _spill(self, *, final: bool) -> None:
        """Move every event waiting in memory to the outbox."""
        # removed only once stored: cut short (shutdown timeout), they are still here
        messages = list(self._pending)
        if not messages:
            return
        try:
            if self.outbox is None:
                raise RuntimeError("no usage outbox")
            await self.outbox.put(messages)
        except Exception:
            if not final:
                # kept in memory (past max_pending) and tried again after the next attempt
                log.error(
                    "usage outbox unavailable: %d usage events held in memory",
                    len(self._pending),
                    exc_info=True,
                )
                return
            del self._pending[: len(messages)]
            USAGE_LOST.labels(self.service).inc(len(messages))
            log.exception(
                "usage outbox unavailable at shutdown: %d usage events lost", len(messages)
            )
            for message in messages:
                log.error("usage event lost: %s", orjson.dumps(message.event).decode())
            return
        # events added meanwhile came after these
        del self._pending[: len(messages)]
        self._outbox_dirty = True
        log.warning("%d usage events moved to the %s outbox table", len(messages), self.service)
        await self._count_outbox()

    async def _count_outbox(self) -> None:
        if self.outbox is None:
            return
        try:
            USAGE_PENDING.labels(self.service, "outbox").set(await self.outbox.count())
        except Exception:
            log.debug("could not count the usage outbox", exc_info=True)

    def _report_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = self._last_report = now
            log.warning(
                "usage events not sent (%s: %s); %d waiting, retrying every %.0f s at most",
                type(exc).__name__,
                exc,
                len(self._pending),
                self.retry_max_s,
            )
        elif now - self._last_report >= 30:
            self._last_report = now
            log.warning(
                "usage events still not sent after %.0f s (%s); %d waiting in memory",
                now - self._down_since,
                type(exc).__name__,
                len(self._pending),
            )

    def _report_up(self) -> None:
        if self._down_since is not None:
            log.info("usage events sent again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
