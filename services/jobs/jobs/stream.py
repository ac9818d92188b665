"""A job's progress as server-sent events, pushed as the job reports it (not polled).

While a client watches a job (the key :data:`libs.queue.names.WATCH_KEY_PREFIX` + id, renewed
while it stays), every lifecycle event of the job, and of its children, also goes to the job's
own log, a short Redis stream (:mod:`libs.queue.events`). The stream here starts from the
job's record, replays that log over it (folding is idempotent, so an event already in the
record changes nothing), then follows the log with a blocking read: a report reaches the
client a few milliseconds after the job made it.

Each pushed event carries its log entry's id as its SSE ``id``: a client that reconnects with
``Last-Event-ID`` gets what it missed from there (or a fresh snapshot when the log no longer
holds that point). The record is read again every ``recheck_s`` while the log is quiet, a
safety net for an event sent before the watch began that the record had not caught yet.

Events: ``progress`` (the job as ``GET /v1/jobs/{id}`` shows it), ``children`` (a parent's
children by status and their mean progress), ``end`` (its final status, then the stream ends).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from libs.queue import TERMINAL_STATUSES, JobEvent
from libs.queue.names import JOB_LOG_PREFIX, WATCH_KEY_PREFIX
from libs.sse import event_frame

# how long a watch lasts unless the stream renews it (it does, every third of it)
WATCH_TTL_S = 60
# longest blocking read (under the app's Redis socket timeout, 5 s)
BLOCK_MS = 2000
# the loader's snapshot carries the record's last_event_at under this key
LAST_EVENT_AT = "_last_event_at"
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")

Snapshot = dict[str, Any]
Loader = Callable[[], Awaitable[tuple[Snapshot | None, dict[str, tuple[str, int]]]]]


def _rank(status: str) -> int:
    return {"queued": 0, "running": 1, "progress": 1}.get(status, 2)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def framed(event: str, data: Any, entry_id: str | None = None) -> bytes:
    """An SSE event, with ``id:`` when it comes from the log (so it can be resumed from)."""
    frame = event_frame(event, data)
    return b"id: " + entry_id.encode() + b"\n" + frame if entry_id else frame


class Folded:
    """A job's snapshot moved on by its events, by the recorder's rules: the status only
    advances in (attempt, rank) order; progress and message follow the newest event."""

    def __init__(self, snapshot: Snapshot) -> None:
        # the newest event the record had folded (not sent: JobOut has no such field)
        last = snapshot.pop(LAST_EVENT_AT, None)
        self.snap = snapshot
        self.last_ts: datetime = last or datetime.min.replace(tzinfo=UTC)

    @property
    def status(self) -> str:
        return str(self.snap["status"])

    def apply(self, ev: JobEvent) -> bool:
        """Fold one event in; whether the snapshot changed."""
        s = self.snap
        row_status = "running" if ev.status == "progress" else ev.status
        here = (int(s.get("attempts") or 1), _rank(str(s["status"])))
        there = (ev.attempt, _rank(row_status))
        ts = ev.ts.isoformat()
        before = (s["status"], s.get("progress"), s.get("message"), s.get("attempts"))
        if there > here:
            s["status"] = row_status
            s["attempts"] = ev.attempt
            s["error"] = ev.error
            s["traceback"] = ev.traceback
            s["run_at"] = ev.run_at.isoformat() if ev.run_at else None
            if row_status == "running" and ev.status == "running":
                s["started_at"] = ts
                s["worker"] = ev.worker or s.get("worker")
            if row_status in TERMINAL_STATUSES:
                s["finished_at"] = ts
        if there > here or (there == here and ev.ts >= self.last_ts):
            if ev.progress is not None:
                s["progress"] = ev.progress
            elif ev.status == "succeeded":
                s["progress"] = 100
            if ev.message is not None:
                s["message"] = ev.message
            self.last_ts = max(self.last_ts, ev.ts)
        return before != (s["status"], s.get("progress"), s.get("message"), s.get("attempts"))


class Children:
    """A parent's children, folded from their events (id → (status, progress))."""

    def __init__(self, known: dict[str, tuple[str, int]]) -> None:
        self.known = known

    def apply(self, ev: JobEvent) -> None:
        status, progress = self.known.get(ev.job_id, ("queued", 0))
        row_status = "running" if ev.status == "progress" else ev.status
        if _rank(row_status) >= _rank(status) or ev.status == "queued":
            status = row_status
        if ev.progress is not None:
            progress = ev.progress
        if row_status == "succeeded":
            progress = 100
        self.known[ev.job_id] = (status, progress)

    def summary(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for status, _ in self.known.values():
            by_status[status] = by_status.get(status, 0) + 1
        total = len(self.known)
        mean = sum(p for _, p in self.known.values()) / total if total else 0.0
        return {"total": total, "by_status": by_status, "progress": round(mean, 1)}


async def job_events(
    redis: Redis,
    job_id: str,
    load: Loader,
    *,
    last_event_id: str | None,
    heartbeat_s: float,
    recheck_s: float,
) -> AsyncIterator[bytes]:
    """The SSE body of one job's progress (see the module docstring)."""
    watch, log = WATCH_KEY_PREFIX + job_id, JOB_LOG_PREFIX + job_id
    await redis.set(watch, b"1", ex=WATCH_TTL_S)
    watched_at = time.monotonic()
    snapshot, children_known = await load()
    if snapshot is None:
        yield framed("end", {"id": job_id, "status": "deleted"})
        return
    folded = Folded(snapshot)
    children = Children(children_known)
    resume = last_event_id if last_event_id and _STREAM_ID.match(last_event_id) else None
    cursor = "0-0"
    if resume is not None:
        head = await redis.xrange(log, count=1)
        if _older(head, resume):
            cursor = resume
        else:
            resume = None  # the log no longer reaches back there: start from the record
    replaying = resume is None
    if replaying:
        # the log so far, folded over the record, before the first frame
        for entry_id, fields in await redis.xrange(log):
            cursor = _text(entry_id)
            _apply(JobEvent.from_fields(fields), job_id, folded, children)
        yield framed("progress", folded.snap, cursor if cursor != "0-0" else None)
        if children.known:
            yield framed("children", children.summary())
    quiet_since = checked = time.monotonic()
    # a quiet stream still sends its keep-alive on time
    block_ms = max(10, int(min(BLOCK_MS, heartbeat_s * 1000)))
    while folded.status not in TERMINAL_STATUSES:
        if time.monotonic() - watched_at > WATCH_TTL_S / 3:
            await redis.expire(watch, WATCH_TTL_S)
            watched_at = time.monotonic()
        resp = await redis.xread({log: cursor}, count=100, block=block_ms)
        entries = [entry for _, batch in resp or [] for entry in batch]
        changed = child_changed = False
        last_id = None
        for entry_id, fields in entries:
            cursor = last_id = _text(entry_id)
            try:
                ev = JobEvent.from_fields(fields)
            except ValueError:
                continue
            mine = ev.job_id == job_id
            moved = _apply(ev, job_id, folded, children)
            changed |= mine and moved
            child_changed |= not mine
        now = time.monotonic()
        if changed:
            yield framed("progress", folded.snap, last_id)
        if child_changed:
            yield framed("children", children.summary(), last_id)
        if entries:
            quiet_since = checked = now
            continue
        if now - checked >= recheck_s:
            checked = now
            fresh, _ = await load()
            if fresh is None:
                yield framed("end", {"id": job_id, "status": "deleted"})
                return
            fresh_folded = Folded(fresh)
            if _rank(fresh_folded.status) > _rank(folded.status) or (fresh.get("attempts") or 1) > (
                folded.snap.get("attempts") or 1
            ):
                folded = fresh_folded
                yield framed("progress", folded.snap)
                quiet_since = now
                continue
        if now - quiet_since >= heartbeat_s:
            quiet_since = now
            yield b": keep-alive\n\n"
    yield framed("end", {"id": job_id, "status": folded.status})


def _older(head: list[Any], resume: str) -> bool:
    """Whether ``resume`` is at or after the log's first entry (numerically)."""
    if not head:
        return False
    first = tuple(int(p) for p in _text(head[0][0]).split("-"))
    return tuple(int(p) for p in resume.split("-")) >= first


def _apply(ev: JobEvent, job_id: str, folded: Folded, children: Children) -> bool:
    if ev.job_id == job_id:
        return folded.apply(ev)
    if ev.parent_id == job_id:
        children.apply(ev)
    return False
