"""What a job function receives: its :class:`JobContext`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.queue.cancel import JobCancelled, is_cancel_requested
from libs.queue.events import JobEvent, emit_event

log = logging.getLogger("aistack.queue")


@dataclass
class JobContext:
    """What a job function receives as its first argument."""

    job_id: str
    service: str
    function: str
    attempt: int
    redis: Redis
    state: dict[str, Any]
    org_id: str | None = None
    user_id: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    internal: bool = False
    _last_progress: int = 0

    def _event(self, status: str, **extra: Any) -> JobEvent:
        return JobEvent(
            job_id=self.job_id,
            service=self.service,
            function=self.function,
            status=status,
            attempt=self.attempt,
            org_id=self.org_id,
            user_id=self.user_id,
            request_id=self.request_id,
            trace_id=self.trace_id,
            internal=self.internal,
            **extra,
        )

    async def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if cancellation was requested.

        Redis unreachable: the job goes on (a cancellation is asked for through Redis, so none
        can have been asked meanwhile; one asked before stays and is seen at a later call).
        """
        try:
            cancelled = await is_cancel_requested(self.redis, self.job_id)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("job %s: cancellation not checked (Redis: %s)", self.job_id, exc)
            return
        if cancelled:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    async def progress(self, pct: float, message: str | None = None) -> None:
        """Report progress (0-100) and a message; raises :class:`JobCancelled` if cancelled."""
        await self.check_cancelled()
        self._last_progress = max(0, min(100, int(pct)))
        await emit_event(
            self.redis, self._event("progress", progress=self._last_progress, message=message)
        )
