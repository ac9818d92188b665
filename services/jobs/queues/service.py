"""The queue overview for platform administrators, across organizations.

"Platform administrator" is auth's notion (a user flagged so, by ``AUTH_PLATFORM_ADMIN_EMAILS``
at sign-up), not a scope: the principal the gateway forwards does not carry it, and an org
admin's ``admin`` scope is not enough to see every organization's queues. So the jobs service
asks auth (``GET /internal/platform-admin``, forwarding the caller's principal as the signed
internal token) and remembers the answer for ``CHECK_CACHE_S``. API keys never qualify (as for
auth's own admin routes).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import SessionFactory
from libs.errors import Forbidden, ServiceUnavailable
from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.queue import fair
from services.jobs.queues.monitor import queue_states
from services.jobs.queues.repository import QueueRepository

CHECK_CACHE_S = 30.0
_checked: dict[uuid.UUID, tuple[bool, float]] = {}


async def require_platform_admin(
    principal: Principal, http: httpx.AsyncClient, auth_url: str, secret: str
) -> None:
    """403 unless auth says the caller is a platform administrator; 503 when auth is away."""
    if principal.kind == "service":
        return
    if principal.user_id is None or principal.key_id is not None:
        raise Forbidden("Platform administrators only", code="platform_admin_required")
    cached = _checked.get(principal.user_id)
    if cached is not None and time.monotonic() - cached[1] < CHECK_CACHE_S:
        allowed = cached[0]
    else:
        token = sign_internal_token(principal, secret)
        try:
            resp = await http.get(
                f"{auth_url.rstrip('/')}/internal/platform-admin",
                headers={INTERNAL_HEADER: token},
                timeout=5,
            )
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                "Cannot check platform administrators (auth unreachable)",
                code="auth_unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        if resp.status_code >= 500:
            raise ServiceUnavailable(
                "Cannot check platform administrators (auth failed)",
                code="auth_unavailable",
                headers={"Retry-After": "5"},
            )
        allowed = resp.status_code == 204
        if len(_checked) > 10_000:
            _checked.clear()
        _checked[principal.user_id] = (allowed, time.monotonic())
    if not allowed:
        raise Forbidden("Platform administrators only", code="platform_admin_required")


class QueueService:
    def __init__(self, session: AsyncSession, sessions: SessionFactory, redis: Redis) -> None:
        self.repo = QueueRepository(session)
        self.sessions = sessions
        self.redis = redis

    async def overview(self) -> dict[str, Any]:
        states = await queue_states(self.redis, self.sessions)
        counts = await self.repo.status_counts(datetime.now(UTC) - timedelta(hours=24))
        now_ms = int(time.time() * 1000)
        queues = []
        for s in states:
            queues.append(
                {
                    "queue": s.queue,
                    "ready": s.depth.ready,
                    "deferred": s.depth.deferred,
                    "fair": s.depth.fair,
                    "running": s.running,
                    "oldest_waiting_s": round(s.oldest_age_s(now_ms), 3),
                    "workers": s.workers,
                    "top_waiting": await fair.waiting_by_member(self.redis, s.queue),
                    "last_24h": counts.get(s.queue, {}),
                }
            )
        schedules = [
            {
                "key": p.key,
                "name": p.name,
                "type": f"{p.service}.{p.function}",
                "cron": p.cron,
                "timezone": p.timezone,
                "paused": p.paused,
                "next_run_at": p.next_run_at,
                "last_run_at": p.last_run_at,
                "last_job_id": p.last_job_id,
                "runs": p.runs,
            }
            for p in await self.repo.platform_schedules()
        ]
        return {"queues": queues, "schedules": schedules}
