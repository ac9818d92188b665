"""What the auth service revokes reaches every gateway at once: API keys and sessions.

Contract with the auth service (Redis):

- API keys: it deletes ``aistack:apikey:<sha256 hex>`` and publishes the hex on
  ``aistack:apikey:revoked``.
- Sessions (logout, logout everywhere, password change): it sets
  ``aistack:auth:session-revoked:<sid>`` for the access tokens' lifetime and publishes the
  sid on ``aistack:auth:session-revoked``. Access tokens of that session die at once
  instead of at their expiry.

Redis unavailable (down or hung; :mod:`libs.redis` skips it after one failed call): a session
check fails *closed* (503 ``session_check_unavailable``, Retry-After), except for a session
this process found not revoked within ``grace`` seconds (``session_revocation_grace_seconds``,
30 by default). Why: a logged-out or stolen-and-revoked session must not become usable because
Redis is sick, and a session this process cannot vouch for may have been revoked while it was
not listening. A recently confirmed one is different: its revocation, had it happened before
the outage, would have been announced to this process (it marks it at once and remembers it
for a day), and during the outage the auth service cannot record one in Redis at all, so
refusing it protects nothing and logs out every active user with the first Redis hiccup. The
grace bounds what a missed announcement can cost; 0 refuses every unconfirmed check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.apikeys import REVOKED_CHANNEL as APIKEY_REVOKED_CHANNEL
from gateway.apikeys import ApiKeyResolver
from libs.errors import ServiceUnavailable
from libs.redis import guard_for

log = logging.getLogger("aistack.gateway.revocations")

SESSION_REVOKED_PREFIX = "aistack:auth:session-revoked:"
SESSION_REVOKED_CHANNEL = "aistack:auth:session-revoked"
_MAX_LOCAL = 100_000
_LOG_EVERY = 10.0


class SessionRevocations:
    """Is this session ended? Announcements mark it at once; Redis is asked at most once a
    second per session, so a missed announcement still counts within a second."""

    def __init__(
        self,
        redis: Redis,
        *,
        local_ttl: float = 1.0,
        remember: float = 86_400,
        grace: float = 30.0,
    ) -> None:
        self.redis = redis
        self.guard = guard_for(redis)
        self.local_ttl = local_ttl
        self.remember = remember
        self.grace = grace
        # sid -> (recheck at, revoked)
        self._known: dict[uuid.UUID, tuple[float, bool]] = {}
        self._logged_at = float("-inf")

    def mark(self, sid: uuid.UUID) -> None:
        self._remember(sid, True)

    def forget_all(self) -> None:
        """Announcements may have been missed: ask Redis again (revocations stay known)."""
        self._known = {s: e for s, e in self._known.items() if e[1]}

    async def is_revoked(self, sid: uuid.UUID) -> bool:
        """Whether ``sid`` ended; raises 503 when that cannot be told (see the module doc)."""
        entry = self._known.get(sid)
        if entry is not None and (entry[1] or entry[0] > time.monotonic()):
            return entry[1]
        try:
            found = await self.guard.run(
                "gateway_session_revocation", self.redis.exists(SESSION_REVOKED_PREFIX + str(sid))
            )
        except (RedisError, OSError) as exc:
            return self._unavailable(sid, entry, exc)
        revoked = bool(found)
        self._remember(sid, revoked)
        return revoked

    def _unavailable(
        self, sid: uuid.UUID, entry: tuple[float, bool] | None, exc: BaseException
    ) -> bool:
        now = time.monotonic()
        # (recheck at) - local_ttl: when Redis last said "not revoked"
        vouched = entry is not None and now - (entry[0] - self.local_ttl) <= self.grace
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            log.error(
                "session revocation checks unavailable (Redis: %s); sessions confirmed in the "
                "last %.0fs pass, others get 503",
                exc,
                self.grace,
            )
        if vouched:
            return False
        raise ServiceUnavailable(
            "Your session cannot be verified right now; retry shortly",
            code="session_check_unavailable",
            headers={"Retry-After": str(max(1, math.ceil(self.guard.retry_s)))},
        )

    def _remember(self, sid: uuid.UUID, revoked: bool) -> None:
        now = time.monotonic()
        if len(self._known) >= _MAX_LOCAL:
            self._known = {s: e for s, e in self._known.items() if e[0] > now}
            if len(self._known) >= _MAX_LOCAL:
                self._known.clear()
        self._known[sid] = (now + (self.remember if revoked else self.local_ttl), revoked)


async def listen(
    redis: Redis,
    stop: asyncio.Event,
    handlers: dict[str, Callable[[str], None]],
    on_resubscribe: Callable[[], None],
) -> None:
    """Call ``handlers[channel](payload)`` for every announcement until ``stop`` is set."""
    backoff = 0.1
    channels = list(handlers)
    while not stop.is_set():
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*channels)
            # announcements may have been missed while (re)connecting
            on_resubscribe()
            backoff = 0.1
            # short polls rather than a blocking listen(): shutdown must not wait on a read
            # that swallows cancellation
            while not stop.is_set():
                message = await pubsub.get_message(timeout=0.2)
                if message is None or message.get("type") != "message":
                    continue
                channel = message.get("channel")
                data = message.get("data")
                name = channel.decode() if isinstance(channel, bytes) else str(channel)
                payload = data.decode() if isinstance(data, bytes) else str(data)
                handler = handlers.get(name)
                if handler is not None:
                    try:
                        handler(payload.strip())
                    except ValueError:
                        log.warning("ignoring malformed announcement on %s", name)
        except Exception as exc:
            log.warning("revocation subscription lost (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):  # not wait_for: see libs.redis.CancelSafeSend
                async with asyncio.timeout(backoff):
                    await stop.wait()
            backoff = min(backoff * 2, 5.0)
        finally:
            # the connection may already be gone
            with contextlib.suppress(Exception):
                await pubsub.aclose()


async def follow(
    redis: Redis, stop: asyncio.Event, api_keys: ApiKeyResolver, sessions: SessionRevocations
) -> None:
    """Apply the auth service's revocation announcements until ``stop`` is set."""

    def resubscribed() -> None:
        api_keys.forget_all()
        sessions.forget_all()

    await listen(
        redis,
        stop,
        {
            APIKEY_REVOKED_CHANNEL: lambda digest: api_keys.forget(digest.lower()),
            SESSION_REVOKED_CHANNEL: lambda sid: sessions.mark(uuid.UUID(sid)),
        },
        resubscribed,
    )


__all__ = [
    "APIKEY_REVOKED_CHANNEL",
    "SESSION_REVOKED_CHANNEL",
    "SESSION_REVOKED_PREFIX",
    "SessionRevocations",
    "follow",
    "listen",
]
