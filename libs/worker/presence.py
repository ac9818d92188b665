"""What a worker keeps up beside its poll loop (:class:`Presence`):

- **wake-ups**: it listens on its queue's wake channel (``<queue>:wake``, published by every
  enqueue), so a new job starts within milliseconds instead of at the next poll;
- **leases**: arq's claim on a running job (``arq:in-progress:<id>``) is a lease of
  ``WORKER_JOB_LEASE_S`` (30 s) renewed every third of it, and so is a fair-queue slot the
  job holds: a worker killed mid-job (SIGKILL, OOM) lets its jobs be claimed again by another
  worker within the lease, each as its next attempt, instead of ``job_timeout`` + 10 s later.
  Renewing sets the key again, so a lease lost with Redis' data is restored and the job is
  not run twice while it still runs;
- **heartbeat**: ``aistack:worker:<id>`` (queue, host, pid, running jobs) every 5 s, expiring
  after 3 missed beats: the jobs service's reconciler tells a live worker from a dead one by it;
- **declarations**: the job types, periodic schedules and per-organization limits of what it
  runs (:mod:`libs.queue.types`), published at start, every minute, and at once when Redis
  lost its data (a marker key gone).

Redis errors here are logged at debug level only: the poll loop notices an outage and says so
once; these loops retry on their next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from arq.constants import in_progress_key_prefix
from arq.jobs import deserialize_result
from arq.worker import JobExecutionFailed

from libs.queue import wrapper
from libs.queue.events import JobEvent
from libs.queue.fair import hold_slots, publish_limits
from libs.queue.names import (
    META_KWARG,
    SCHEDULES_KEY,
    TYPES_KEY,
    WORKER_KEY_PREFIX,
    wake_channel,
)
from libs.queue.types import Periodic, spec_of

if TYPE_CHECKING:
    from libs.worker.runner import Worker

log = logging.getLogger("aistack.queue.presence")

HEARTBEAT_S = 5.0
HEARTBEAT_TTL_S = 3 * HEARTBEAT_S
ANNOUNCE_EVERY_S = 60.0
# gone when Redis lost its data: every worker then publishes its declarations again at once
EPOCH_KEY = "aistack:workers:epoch"
PING_FUNCTION = "aistack_ping"


def early_failure_event(worker: Worker, job_id: str, result_data: bytes) -> JobEvent:
    """The terminal event of a job arq failed before running it (see ``finish_failed_job``)."""
    result = deserialize_result(result_data, deserializer=worker.job_deserializer)
    kwargs = dict(result.kwargs)
    meta: dict[str, Any] = kwargs.pop(META_KWARG, None) or {}
    exc = result.result
    status, error = "failed", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, asyncio.CancelledError):
        status, error = "cancelled", "cancelled before it started"
    elif isinstance(exc, JobExecutionFailed) and str(exc).startswith("max "):
        # every try so far ended with its worker gone (killed, lost): a dead letter
        status = "dead"
        error = f"{error} (each try ended with its worker gone: killed or out of memory?)"
    return JobEvent(
        job_id=job_id,
        service=meta.get("service") or worker.presence.service,
        function=result.function,
        status=status,
        attempt=result.job_try or 1,
        error=error[:2000],
        message=error[:200] if status == "cancelled" else None,
        org_id=meta.get("org_id"),
        user_id=meta.get("user_id"),
        request_id=meta.get("request_id"),
        internal=bool(meta.get("internal")),
        parent_id=meta.get("parent_id"),
        args=list(result.args),
        kwargs=kwargs,
    )


def new_worker_id(service: str) -> str:
    """A worker's id: its service, host, pid and a random suffix."""
    return f"{service}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def declarations(service: str, queue: str, functions: dict[str, Any]) -> dict[str, bytes]:
    """What the worker publishes of its job types (:data:`libs.queue.names.TYPES_KEY`)."""
    now = datetime.now(UTC).isoformat()
    out: dict[str, bytes] = {}
    for name, function in functions.items():
        if name == PING_FUNCTION:
            continue
        spec = spec_of(function)
        body = spec.describe(service) if spec is not None else {"service": service, "name": name}
        out[f"{service}:{name}"] = orjson.dumps({**body, "queue": queue, "published_at": now})
    return out


class Presence:
    """The worker's background loops (see the module docstring)."""

    def __init__(
        self,
        worker: Worker,
        *,
        service: str,
        lease_s: float,
        schedules: Sequence[Periodic] = (),
    ) -> None:
        self.worker = worker
        self.service = service
        self.lease_s = lease_s
        self.schedules = list(schedules)
        self.worker_id = new_worker_id(service)
        self.started_at = datetime.now(UTC).isoformat()
        self.wake = asyncio.Event()
        self._renew = asyncio.Event()
        self._resubscribe = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._forever(self._listen, "wake-ups")),
            loop.create_task(self._forever(self._keep_leases, "leases")),
            loop.create_task(self._forever(self._announce, "heartbeat")),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.worker.pool.delete(WORKER_KEY_PREFIX + self.worker_id), 2)

    def redis_back(self) -> None:
        """Redis answers again: renew leases and listen again at once."""
        self._renew.set()
        self._resubscribe.set()

    async def _forever(self, loop: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("worker %s: %s failed (%s); again shortly", self.worker_id, what, exc)
                await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        pubsub = self.worker.pool.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(wake_channel(self.worker.queue_name))
            self._resubscribe.clear()
            checked = time.monotonic()
            while not self._resubscribe.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    self.wake.set()
                elif time.monotonic() - checked > 30:
                    # a connection a dropped network left open answers nothing: check it
                    checked = time.monotonic()
                    await asyncio.wait_for(pubsub.ping(), 5)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _keep_leases(self) -> None:
        every = max(0.05, min(self.lease_s / 3, 10.0))
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await self._renew.wait()
            self._renew.clear()
            await self.renew()

    async def renew(self) -> None:
        """Renew the leases of the jobs running here (and the fair slots they hold)."""
        ids = [j for j, t in self.worker.job_tasks.items() if not t.done()]
        if not ids:
            return
        lease_ms = int(self.lease_s * 1000)
        async with self.worker.pool.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.psetex(in_progress_key_prefix + job_id, lease_ms, b"1")
            await pipe.execute()
        slots = [
            (jc.slot, job_id)
            for job_id in ids
            if (jc := wrapper.RUNNING.get(job_id)) is not None and jc.slot is not None
        ]
        if slots:
            await hold_slots(self.worker.pool, slots, int(time.time() * 1000) + lease_ms)

    async def _announce(self) -> None:
        last_declared = time.monotonic()  # the worker declared before its first poll
        while True:
            pool = self.worker.pool
            fresh = await pool.set(EPOCH_KEY, self.started_at, nx=True)
            if fresh or time.monotonic() - last_declared >= ANNOUNCE_EVERY_S:
                await self.declare()
                last_declared = time.monotonic()
            beat = {
                "id": self.worker_id,
                "service": self.service,
                "queue": self.worker.queue_name,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": self.started_at,
                "running": len(self.worker.job_tasks),
                "max_jobs": self.worker.max_jobs,
                "seen_at": datetime.now(UTC).isoformat(),
            }
            await pool.set(
                WORKER_KEY_PREFIX + self.worker_id, orjson.dumps(beat), ex=int(HEARTBEAT_TTL_S)
            )
            await asyncio.sleep(HEARTBEAT_S)

    async def declare(self) -> None:
        """Publish the job types, schedules and limits of what this worker runs."""
        pool = self.worker.pool
        functions = self.worker.functions
        types = declarations(self.service, self.worker.queue_name, functions)
        schedules = {
            f"{self.service}:{p.name}": orjson.dumps(p.describe(self.service))
            for p in self.schedules
        }
        async with pool.pipeline(transaction=False) as pipe:
            if types:
                pipe.hset(TYPES_KEY, mapping=types)
            if schedules:
                pipe.hset(SCHEDULES_KEY, mapping=schedules)
            await pipe.execute()
        limits = {
            name: spec.concurrency
            for name, f in functions.items()
            if (spec := spec_of(f)) is not None and spec.concurrency
        }
        await publish_limits(pool, self.worker.queue_name, limits)
