"""What a job function receives: its :class:`JobContext`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.queue.cancel import JobCancelled, is_cancel_requested
from libs.queue.events import JobEvent, emit_event
from libs.queue.names import Priority

if TYPE_CHECKING:
    from libs.queue.types import JobSpec

log = logging.getLogger("aistack.queue")

# what the worker running a job puts in its ctx (libs.worker.execute): where the job's
# lifecycle events go, and whether a cancellation was asked before it started
SINK_CTX = "_aistack_events"
CANCELLED_CTX = "_aistack_cancelled"


class EventSink:
    """Where a job's running and end events go when its worker sends them with the job's end
    (:class:`libs.worker.execute.JobReports`); without one they are emitted at once."""

    async def started(self, event: JobEvent) -> None:
        raise NotImplementedError

    async def before_progress(self) -> None:
        raise NotImplementedError

    async def end(self, event: JobEvent) -> None:
        raise NotImplementedError

    async def release(self, slot: str) -> None:
        """Give the job's fair slot back with its end."""
        raise NotImplementedError


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
    # the declaration of its type, and whether the jobs service records this job's progress
    spec: JobSpec | None = None
    recorded: bool = True
    parent_id: str | None = None
    priority: Priority | None = None
    # the worker running it (libs.worker), shown on the job's record while it runs
    worker_id: str | None = None
    # the fair-queue slot it holds (key), given back when it ends
    slot: str | None = None
    max_tries: int | None = None
    sink: EventSink | None = None
    _last_progress: int = 0
    _children: list[str] = field(default_factory=list)

    def _event(self, status: str, **extra: Any) -> JobEvent:
        extra.setdefault("parent_id", self.parent_id)
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

    async def report(self, event: JobEvent, *, end: bool) -> None:
        """Send a lifecycle event: through the worker's sink (with the job's end) when there
        is one, else at once."""
        if self.sink is None:
            await emit_event(self.redis, event)
        elif end:
            await self.sink.end(event)
        else:
            await self.sink.started(event)

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
        if self.recorded:
            if self.sink is not None:
                await self.sink.before_progress()  # its running event first
            await emit_event(
                self.redis, self._event("progress", progress=self._last_progress, message=message)
            )

    async def enqueue_child(
        self,
        function: str,
        *,
        service: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        priority: Priority | None = None,
    ) -> str | None:
        """Enqueue a job as a child of this one (same organization and user): the parent's
        record and progress stream show its children's aggregate progress. Idempotent with a
        ``job_id`` derived from this job's (a re-run enqueues the same children)."""
        from libs.queue.enqueue import enqueue_now

        jid = await enqueue_now(
            self.redis,
            service=service or self.service,
            function=function,
            args=args,
            kwargs=kwargs,
            job_id=job_id,
            org_id=self.org_id,
            user_id=self.user_id,
            priority=priority or self.priority,
            parent_id=self.job_id,
        )
        if jid:
            self._children.append(jid)
        return jid
