"""Lifecycle events: what jobs report on the stream :data:`EVENTS_STREAM`."""

from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from libs.queue.names import (
    EVENTS_MAXLEN,
    EVENTS_STREAM,
    JOB_LOG_PREFIX,
    WATCH_KEY_PREFIX,
    _json,
    _now,
    queue_name,
)

log = logging.getLogger("aistack.queue")


_OPTIONAL_TEXT = (
    "org_id",
    "user_id",
    "request_id",
    "trace_id",
    "message",
    "error",
    "retry_of",
    "traceback",
    "worker",
    "parent_id",
    "priority",
    "traceparent",
)


def _utc(text: str) -> datetime:
    ts = datetime.fromisoformat(text)
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@dataclass
class JobEvent:
    """One lifecycle event on :data:`EVENTS_STREAM`; stream fields are strings ("" means unset).

    ``status`` is one of queued, running, progress, succeeded, failed, cancelled, dead.
    ``attempt`` is arq's try number (1 first). ``args``/``kwargs`` (JSON) are sent with
    ``queued``, and with ``failed``/``dead`` (a job type recorded only when it fails has no
    ``queued`` row). ``ts`` is the event's ISO-8601 UTC time; consumers order events of one job
    by ``(attempt, status rank)`` for the status and by ``ts`` for progress and message.

    Also: ``traceback`` (a summary, with failed/dead), ``worker`` (the worker running it, with
    running), ``parent_id`` (a child job's parent), ``priority``, ``run_at`` (a queued attempt
    that waits: a retry's backoff or a deferred job), ``max_tries`` and ``traceparent`` (the
    W3C trace context it was enqueued in, so a job enqueued again keeps its trace).
    """

    job_id: str
    service: str
    function: str
    status: str
    attempt: int = 1
    progress: int | None = None
    message: str | None = None
    error: str | None = None
    org_id: str | None = None
    user_id: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    queue: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    retry_of: str | None = None
    internal: bool = False
    traceback: str | None = None
    worker: str | None = None
    parent_id: str | None = None
    priority: str | None = None
    run_at: datetime | None = None
    max_tries: int | None = None
    traceparent: str | None = None
    ts: datetime = field(default_factory=_now)

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for XADD."""
        out: dict[str, str] = {
            "job_id": self.job_id,
            "service": self.service,
            "function": self.function,
            "status": self.status,
            "attempt": str(self.attempt),
            "ts": self.ts.isoformat(),
            "queue": self.queue or queue_name(self.service),
        }
        for name in _OPTIONAL_TEXT:
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        if self.progress is not None:
            out["progress"] = str(self.progress)
        if self.max_tries is not None:
            out["max_tries"] = str(self.max_tries)
        if self.run_at is not None:
            out["run_at"] = self.run_at.isoformat()
        if self.internal:
            out["internal"] = "1"
        if self.args is not None:
            out["args"] = _json(self.args)
        if self.kwargs is not None:
            out["kwargs"] = _json(self.kwargs)
        return out

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> JobEvent:
        """Parse stream fields (bytes or str) back into an event; raises ValueError if invalid."""
        f = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }
        try:
            ts = _utc(f["ts"])
            return cls(
                job_id=f["job_id"],
                service=f["service"],
                function=f["function"],
                status=f["status"],
                attempt=int(f.get("attempt") or 1),
                progress=int(f["progress"]) if f.get("progress") else None,
                message=f.get("message"),
                error=f.get("error"),
                org_id=f.get("org_id") or None,
                user_id=f.get("user_id") or None,
                request_id=f.get("request_id") or None,
                trace_id=f.get("trace_id") or None,
                queue=f.get("queue") or None,
                args=orjson.loads(f["args"]) if f.get("args") else None,
                kwargs=orjson.loads(f["kwargs"]) if f.get("kwargs") else None,
                retry_of=f.get("retry_of") or None,
                internal=f.get("internal") == "1",
                traceback=f.get("traceback") or None,
                worker=f.get("worker") or None,
                parent_id=f.get("parent_id") or None,
                priority=f.get("priority") or None,
                run_at=_utc(f["run_at"]) if f.get("run_at") else None,
                max_tries=int(f["max_tries"]) if f.get("max_tries") else None,
                traceparent=f.get("traceparent") or None,
                ts=ts,
            )
        except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"invalid job event: {exc}") from exc


# events whose XADD failed (Redis down or hung), sent again with the next event that gets
# through (or when a worker sees Redis back): the jobs service's fold is idempotent and
# order-independent, so a late or repeated event lands where it belongs; bounded (oldest
# dropped past it, logged) so a long outage cannot grow memory without limit
UNSENT_EVENTS_MAX = 10_000
_unsent: collections.deque[JobEvent] = collections.deque()


# XADD one event to the stream, and to the logs of the job and of its parent when someone
# watches them (an SSE client: see libs.queue.names.WATCH_KEY_PREFIX), in one round trip.
# KEYS: stream, job's watch key, job's log, parent's watch key, parent's log (or "" twice)
# ARGV: maxlen, log maxlen, log ttl seconds, fields as a JSON array [name, value, ...]
_EMIT = """
local fields = cjson.decode(ARGV[4])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
for i = 2, #KEYS, 2 do
  if KEYS[i] ~= '' and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('XADD', KEYS[i + 1], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
    redis.call('EXPIRE', KEYS[i + 1], ARGV[3])
  end
end
return 1
"""
_EMIT_SHA = hashlib.sha1(_EMIT.encode(), usedforsecurity=False).hexdigest()
# a watched job's log: its last events, kept a while after the last one (a client that
# reconnects with Last-Event-ID resumes from it)
JOB_LOG_MAXLEN = 200
JOB_LOG_TTL_S = 3600


def emit_script() -> str:
    """The script :func:`emit_event` runs (for a transaction that sends events with it)."""
    return _EMIT


def event_fields_json(event: JobEvent) -> bytes:
    """An event's stream fields as the JSON array [name, value, ...] the scripts take."""
    flat: list[str] = []
    for name, value in event.to_fields().items():
        flat += (name, value)
    return orjson.dumps(flat)


def emit_args(event: JobEvent) -> list[Any]:
    """The script's arguments for ``event`` (key count, keys, arguments)."""
    keys = [
        EVENTS_STREAM,
        WATCH_KEY_PREFIX + event.job_id,
        JOB_LOG_PREFIX + event.job_id,
    ]
    if event.parent_id:
        keys += [WATCH_KEY_PREFIX + event.parent_id, JOB_LOG_PREFIX + event.parent_id]
    return [
        len(keys),
        *keys,
        EVENTS_MAXLEN,
        JOB_LOG_MAXLEN,
        JOB_LOG_TTL_S,
        event_fields_json(event),
    ]


async def emit_event(redis: Redis, event: JobEvent) -> None:
    """XADD one lifecycle event (approximate MAXLEN); failures are logged, never raised.

    An event that could not be sent is kept and sent again after the next one that is (see
    :func:`resend_unsent_events`), so a job that ended during an outage is not shown running.
    The event also goes to the job's own log (and its parent's) while someone watches it.
    """
    try:
        args = emit_args(event)
        try:
            await redis.evalsha(_EMIT_SHA, *args)  # type: ignore[misc]
        except NoScriptError:
            await redis.eval(_EMIT, *args)  # type: ignore[misc]
    except Exception as exc:
        log.warning(
            "could not emit %s event for job %s (kept to send again): %s",
            event.status,
            event.job_id,
            exc,
        )
        if len(_unsent) >= UNSENT_EVENTS_MAX:
            lost = _unsent.popleft()
            log.error("job event lost (too many unsent): %s %s", lost.status, lost.job_id)
        _unsent.append(event)
        return
    if _unsent:
        await resend_unsent_events(redis)


async def resend_unsent_events(redis: Redis) -> int:
    """Send the events kept by :func:`emit_event` (oldest first); returns how many went."""
    sent = 0
    while _unsent:
        batch = [_unsent.popleft() for _ in range(min(len(_unsent), 500))]
        try:
            await redis.script_load(_EMIT)
            async with redis.pipeline(transaction=False) as pipe:
                for ev in batch:
                    pipe.evalsha(_EMIT_SHA, *emit_args(ev))
                await pipe.execute()
        except Exception as exc:
            _unsent.extendleft(reversed(batch))  # kept, in order, for the next try
            log.warning("unsent job events still not sent (%d): %s", len(_unsent), exc)
            break
        sent += len(batch)
    if sent:
        log.info("sent %d job events kept during a Redis outage", sent)
    return sent
