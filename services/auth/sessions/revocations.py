"""Session revocations reach every gateway, even when Redis is down at the moment they happen.

Gateways learn that a session ended from Redis: the marker ``aistack:auth:session-revoked:<sid>``
(kept for the access tokens' lifetime) and a message on ``aistack:auth:session-revoked``
(gateway/revocations.py). PostgreSQL holds the truth (``auth.sessions.revoked_at``) and, in the
same transaction, one ``auth.pending_revocations`` row per ended session (an outbox). After the
commit the announcement is tried at once (through the Redis guard: 250 ms at most when Redis
hangs, nothing when it is known down) and the rows are deleted once it went out; the request
itself never fails for Redis.

Rows left behind (Redis down or hung, the process died between commit and announcement) are
announced by :func:`replay_forever`, which runs in every auth process and in the auth worker. The
table is empty nearly always, so it looks when it starts and then every
``AUTH_REVOCATION_REPLAY_IDLE_SECONDS`` (15 s), but once a second from the moment an announcement
failed in its process until nothing is owed: how late that makes an announcement is in the
README ("When Redis is down or hung"). Replays are idempotent and spread over processes with
``FOR UPDATE SKIP LOCKED``; a row whose tokens have all expired is dropped unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import session_scope
from libs.redis import guard_for
from libs.storage_errors import describe
from services.auth.models import PendingRevocation
from services.auth.settings import get_settings

log = logging.getLogger("aistack.auth.revocations")

# Redis contract with the gateway (gateway/revocations.py)
SESSION_REVOKED_PREFIX = "aistack:auth:session-revoked:"
SESSION_REVOKED_CHANNEL = "aistack:auth:session-revoked"

# while an announcement is failing; else AuthSettings.revocation_replay_idle_seconds
REPLAY_INTERVAL_S = 1.0
REPLAY_BATCH = 500
REPLAY_DEADLINE_S = 2.0
# the marker outlives the access tokens a little (clock skew between processes)
MARKER_MARGIN_S = 60


def marker_ttl(access_token_ttl: int) -> int:
    return access_token_ttl + MARKER_MARGIN_S


async def record(
    session: AsyncSession, session_ids: Sequence[uuid.UUID], now: datetime, ttl: int
) -> None:
    """In the transaction that ends the sessions: remember to announce them."""
    if not session_ids:
        return
    expires = now + timedelta(seconds=ttl)
    stmt = insert(PendingRevocation).values(
        [{"session_id": sid, "marker_expires_at": expires} for sid in session_ids]
    )
    await session.execute(stmt.on_conflict_do_nothing(index_elements=["session_id"]))


async def announce(
    redis: Redis, items: Sequence[tuple[uuid.UUID, int]], deadline_s: float | None = None
) -> None:
    """Set each session's marker (``ttl`` seconds) and tell every gateway; raises if Redis
    did not take them all. Through the Redis guard (the request path: its short deadline,
    skipped while Redis is marked down), or with ``deadline_s`` asking Redis itself."""
    pipe = redis.pipeline(transaction=False)
    for sid, ttl in items:
        pipe.set(f"{SESSION_REVOKED_PREFIX}{sid}", b"1", ex=ttl)
        pipe.publish(SESSION_REVOKED_CHANNEL, str(sid))
    try:
        if deadline_s is None:
            await guard_for(redis).run("auth_session_revoked", pipe.execute())
            return
        async with asyncio.timeout(deadline_s):
            await pipe.execute()
    except Exception:
        # the rows stay in auth.pending_revocations: this process's replay looks every
        # second from now on, so they go out within a second of Redis answering
        for wake in _wakeups:
            wake.set()
        raise


async def announced(session: AsyncSession, session_ids: Sequence[uuid.UUID]) -> None:
    """After :func:`announce` succeeded: these need no replay (commits ``session``)."""
    await session.execute(
        delete(PendingRevocation).where(PendingRevocation.session_id.in_(list(session_ids)))
    )
    await session.commit()


async def replay(
    session_factory: Callable[[], AsyncSession], redis: Redis, now: datetime | None = None
) -> int:
    """Announce every pending revocation; how many markers were written. Raises when Redis
    does not take them (the rows stay for the next try)."""
    total = 0
    while True:
        now_ = now or datetime.now(UTC)
        async with session_scope(session_factory) as session:
            rows = (
                await session.execute(
                    select(PendingRevocation.session_id, PendingRevocation.marker_expires_at)
                    .order_by(PendingRevocation.created_at)
                    .limit(REPLAY_BATCH)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return total
            live = [
                (sid, math.ceil((expires - now_).total_seconds()))
                for sid, expires in rows
                if expires > now_
            ]
            if live:
                # not through the guard: the replay asks Redis itself every round, so it
                # announces within a round of Redis answering, before most gateways' own
                # probes (every 2 s) have even noticed
                await announce(redis, live, deadline_s=REPLAY_DEADLINE_S)
            await session.execute(
                delete(PendingRevocation).where(
                    PendingRevocation.session_id.in_([sid for sid, _ in rows])
                )
            )
        total += len(live)
        if len(rows) < REPLAY_BATCH:
            return total


# one event per running replay_forever: set when an announcement fails in this process
_wakeups: set[asyncio.Event] = set()


async def replay_forever(
    session_factory: Callable[[], Any],
    redis: Redis,
    interval_s: float = REPLAY_INTERVAL_S,
    idle_s: float | None = None,
) -> None:
    """Announce pending revocations until cancelled: at once, then every ``idle_s``
    (default ``AUTH_REVOCATION_REPLAY_IDLE_SECONDS``), but every ``interval_s`` from an
    announcement failing in this process until one succeeds (the module docstring)."""
    if idle_s is None:
        idle_s = get_settings().revocation_replay_idle_seconds
    wake = asyncio.Event()
    _wakeups.add(wake)
    failing = False
    try:
        while True:
            wake.clear()
            try:
                sent = await replay(session_factory, redis)
                if sent:
                    log.warning("announced %d session revocations that Redis missed", sent)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning(
                        "pending session revocations not announced yet (%s); retrying every %.0f s",
                        describe(exc),
                        interval_s,
                    )
                failing = True
            if failing:
                await asyncio.sleep(interval_s)
                continue
            # nothing owed that this process knows of: look again after idle_s, or at once
            # when an announcement fails here meanwhile
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_s):
                    await wake.wait()
    finally:
        _wakeups.discard(wake)


__all__ = [
    "SESSION_REVOKED_CHANNEL",
    "SESSION_REVOKED_PREFIX",
    "announce",
    "announced",
    "marker_ttl",
    "record",
    "replay",
    "replay_forever",
]
