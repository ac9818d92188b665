"""The live side of the in-app center: a short Redis stream per user, followed over SSE.

The fan-out (and every read, mark or archive) appends an entry to the user's stream
``aistack:notify:inbox:<user>`` after its transaction commits: ``notification`` (the new
notification) or ``changed`` (the unread count moved). Each entry names the organization it is
about (empty: the user's account, every organization). An SSE client follows the stream with a
blocking read and gets ``notification`` events and ``count`` events (the unread count); each
carries its entry id as SSE ``id``, so a client reconnecting with
``Last-Event-ID`` gets what it missed while the stream still holds it (the last
:data:`INBOX_MAXLEN` entries; older, it starts afresh with the count). A stream ends after
``JOBS_NOTIFICATION_STREAM_MAX_S`` (browsers' EventSource reconnects by itself): a caller whose
credentials lapsed, or who left the organization, stops receiving.

The count is read from the database when the stream starts, on every ``changed`` entry (a read,
mark or archive) and at most every :data:`RECOUNT_S` while notifications arrive; in between,
each new notification adds one (a new notification is unread). Reading it afresh for every
batch of notifications scanned all of the user's unread ones each time: with ten followers of
10,000-notification inboxes, PostgreSQL spent ~14 ms per event on counts against ~1 ms on the
fan-out's writes (``make bench BENCH_ARGS=fanout``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from libs.sse import event_frame

INBOX_PREFIX = "aistack:notify:inbox:"
INBOX_MAXLEN = 500
# a stream untouched this long is dropped (its user has nothing live to resume)
INBOX_TTL_S = 7 * 24 * 3600
# longest blocking read (under the app's Redis socket timeout)
BLOCK_MS = 2000
# while notifications keep arriving, the unread count is read afresh at most this often (it is
# otherwise kept by adding one per notification: exact unless a notification committed between
# the first count and the stream's cursor, which this corrects)
RECOUNT_S = 30.0
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def inbox_key(user_id: uuid.UUID) -> str:
    return f"{INBOX_PREFIX}{user_id}"


async def publish(
    redis: Redis,
    entries: Sequence[tuple[uuid.UUID, uuid.UUID | None, str, dict[str, Any] | None]],
) -> None:
    """Append ``(user, org, "notification" | "changed", data)`` entries to users' streams."""
    if not entries:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for user_id, org_id, kind, data in entries:
            key = inbox_key(user_id)
            fields = {"t": kind, "org": str(org_id) if org_id else "", "d": orjson.dumps(data)}
            pipe.xadd(key, fields, maxlen=INBOX_MAXLEN, approximate=True)  # type: ignore[arg-type]
            pipe.expire(key, INBOX_TTL_S)
        await pipe.execute()


# One round trip for many new notifications. ARGV: maxlen, ttl, the streams' key prefix, then
# per group (one event's notifications): its org, the JSON before and after the notification id,
# the recipients' user ids and the notifications' ids, each list as one string of 36-character
# UUIDs. The keys are built here from the prefix (one Redis, no cluster: see docs/architecture).
_PUBLISH_LUA = """
local maxlen, ttl, prefix = ARGV[1], ARGV[2], ARGV[3]
local k = 0
for g = 4, #ARGV, 5 do
  local org, head, tail, users, ids = ARGV[g], ARGV[g + 1], ARGV[g + 2], ARGV[g + 3], ARGV[g + 4]
  for i = 1, #users, 36 do
    local key = prefix .. string.sub(users, i, i + 35)
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*',
      't', 'notification', 'org', org, 'd', head .. string.sub(ids, i, i + 35) .. tail)
    redis.call('EXPIRE', key, ttl)
    k = k + 1
  end
end
return k
"""
# entries per script call (a call holds Redis for its duration: a few ms per 1,000 entries)
PUBLISH_CHUNK = 2000


class LiveGroup:
    """One event's new notifications for the live streams: the payload (a notification's JSON)
    built once, only its id differing per recipient."""

    def __init__(self, org_id: uuid.UUID | None, payload: dict[str, Any], placeholder: str):
        blob = orjson.dumps(payload)
        head, sep, tail = blob.partition(orjson.dumps(placeholder))
        if not sep:
            raise ValueError("the placeholder id is not in the payload")
        self.org = str(org_id) if org_id else ""
        self.head = head + b'"'
        self.tail = b'"' + tail
        # recipients' user ids and their notifications' ids (canonical 36-character UUIDs)
        self.users: list[str] = []
        self.ids: list[str] = []


async def publish_notifications(redis: Redis, groups: Sequence[LiveGroup]) -> int:
    """Append each group's notifications to its recipients' streams (entries as
    :func:`publish` makes them), in a few script calls; how many were appended."""
    script = redis.register_script(_PUBLISH_LUA)
    done = 0
    args: list[Any] = []
    count = 0
    for g in groups:
        for start in range(0, len(g.users), PUBLISH_CHUNK):
            users = g.users[start : start + PUBLISH_CHUNK]
            if count + len(users) > PUBLISH_CHUNK and args:
                done += int(await script(args=[INBOX_MAXLEN, INBOX_TTL_S, INBOX_PREFIX, *args]))
                args, count = [], 0
            ids = g.ids[start : start + PUBLISH_CHUNK]
            args += [g.org, g.head, g.tail, "".join(users), "".join(ids)]
            count += len(users)
    if args:
        done += int(await script(args=[INBOX_MAXLEN, INBOX_TTL_S, INBOX_PREFIX, *args]))
    return done


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _frame(event: str, data: Any, entry_id: str | None) -> bytes:
    frame = event_frame(event, data)
    return (b"id: " + entry_id.encode() + b"\n" + frame) if entry_id else frame


async def inbox_events(
    redis: Redis,
    user_id: uuid.UUID,
    org_id: uuid.UUID | None,
    unread: Callable[[], Awaitable[int]],
    *,
    last_event_id: str | None,
    heartbeat_s: float,
    max_s: float,
) -> AsyncIterator[bytes]:
    """The SSE body of a user's inbox in one organization (see the module docstring); it ends
    after ``max_s`` (the client reconnects, its credentials checked again)."""
    ends_at = time.monotonic() + max_s
    key = inbox_key(user_id)
    mine = {"", str(org_id) if org_id else ""}
    cursor: str | None = None
    if last_event_id and _STREAM_ID.match(last_event_id):
        head = await redis.xrange(key, count=1)
        if head and _ids(last_event_id) >= _ids(_text(head[0][0])):
            cursor = last_event_id
    count: int | None = None
    counted_at = float("-inf")
    if cursor is None:
        # from now on; what came before is in GET /v1/notifications
        last = await redis.xrevrange(key, count=1)
        cursor = _text(last[0][0]) if last else "0-0"
        count, counted_at = await unread(), time.monotonic()
        yield _frame("count", {"unread": count}, None)
    quiet_since = time.monotonic()
    block_ms = max(10, int(min(BLOCK_MS, heartbeat_s * 1000)))
    while time.monotonic() < ends_at:
        wait = max(10, min(block_ms, int((ends_at - time.monotonic()) * 1000)))
        resp = await redis.xread({key: cursor}, count=100, block=wait)
        entries = [entry for _, batch in resp or [] for entry in batch]
        changed_id = None
        added, recount = 0, False
        for entry_id, fields in entries:
            cursor = _text(entry_id)
            f = {_text(k): v for k, v in fields.items()}
            if _text(f.get("org", b"")) not in mine:
                continue
            if _text(f.get("t", b"")) == "notification":
                yield _frame("notification", orjson.loads(f["d"]), cursor)
                added += 1
            else:
                recount = True
            changed_id = cursor
        now = time.monotonic()
        if changed_id is not None:
            if count is None or recount or now - counted_at >= RECOUNT_S:
                count, counted_at = await unread(), now
            else:
                count += added
            yield _frame("count", {"unread": count}, changed_id)
        if entries:
            quiet_since = now
        elif now - quiet_since >= heartbeat_s:
            quiet_since = now
            yield b": keep-alive\n\n"


def _ids(entry_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in entry_id.split("-"))
