"""The worker that rides out Redis outages (:class:`Worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis, log_redis_info
from arq.worker import Worker as ArqWorker

from libs.queue import emit_event, fair, resend_unsent_events
from libs.queue.names import fair_prefix
from libs.worker import execute
from libs.worker.connections import (
    DOWN_REPORT_EVERY_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    REDIS_DOWN,
    open_pool,
)
from libs.worker.presence import Presence, early_failure_event

# what worker_settings puts in ctx for this worker (arq's own Worker takes no extra arguments)
SERVICE_CTX = "aistack_service"
SCHEDULES_CTX = "aistack_schedules"
LEASE_CTX = "aistack_lease_s"
DEFAULT_LEASE_S = 30.0

log = logging.getLogger("aistack.worker")


class Worker(ArqWorker):
    """arq's worker that waits for Redis instead of exiting when it is unreachable, starts new
    work at once, takes jobs fairly and keeps short leases on what it runs.

    arq gives up after ``conn_retries`` (5 x 1 s) at start and on the first failed command
    later, so a Redis outage longer than a few seconds took every worker down (and, under
    ``make run``, the whole stack once the supervisor stopped restarting them).

    Each poll is one script (:func:`libs.queue.fair.poll`): fair dispatch from organizations'
    queues and the claim of as many ready jobs as the worker has room for. Between polls it
    waits for a wake-up (a job enqueued, or one of its own jobs ended while more were ready)
    or ``poll_delay`` (deferred jobs and retries coming due). The background loops (wake-ups,
    leases, heartbeat, declarations) are :class:`libs.worker.presence.Presence`'s; what it
    needs of the service (its name, periodic schedules, the lease) travels in ``ctx``
    (:func:`libs.worker.options.worker_settings`), so arq's own worker accepts the same
    settings.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._down_since: float | None = None
        self._down_reported = 0.0
        self._reconnect_s = RECONNECT_MIN_S
        self._resend_tasks: set[asyncio.Task[int]] = set()
        # set when the poll loop hears from Redis again: whoever waits for it goes on at once
        self._back = asyncio.Event()
        self._closing = False
        # jobs whose end is recorded in Redis, until their run_job returns
        self._recorded: set[str] = set()
        # writes of jobs' ends waiting for Redis (arq shields them from the job's cancellation)
        self._recording: set[asyncio.Task[Any]] = set()
        service = self.ctx.get(SERVICE_CTX) or self.queue_name.removeprefix("aistack:queue:")
        lease_s = float(self.ctx.get(LEASE_CTX) or DEFAULT_LEASE_S)
        self.presence = Presence(
            self, service=service, lease_s=lease_s, schedules=self.ctx.get(SCHEDULES_CTX) or ()
        )
        self.worker_id = self.presence.worker_id
        self.ctx["worker_id"] = self.worker_id
        # the claim of a job is a lease the presence renews (see libs.worker.presence)
        self.in_progress_timeout_s = lease_s
        # a job of ours ended while more were ready (poll again now, not at poll_delay)
        self._slot_freed = asyncio.Event()
        self._full = False
        # a job's lifecycle events and fair slot, written with its end (libs.worker.execute)
        self.end_events: dict[str, tuple[list[Any], str | None]] = {}
        # what the poll read of the jobs it claimed, until they start
        self.claimed: dict[str, fair.Claimed] = {}

    async def main(self) -> None:
        # arq's main, with the connection and every poll iteration riding out Redis loss
        if self._pool is None:
            self._pool = await self._connect()
        log.info(
            "starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions)
        )
        with contextlib.suppress(*REDIS_DOWN):
            await log_redis_info(self.pool, log.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        # limits before the first poll dispatches anything (later, every minute)
        with contextlib.suppress(*REDIS_DOWN):
            await self.presence.declare()
        self.presence.start()
        while True:
            self.presence.wake.clear()
            self._slot_freed.clear()
            try:
                await self._poll_iteration()
                if self.burst:
                    if 0 <= self.max_burst_jobs <= self._jobs_started():
                        await asyncio.gather(*self.tasks.values())
                        return
                    if await self._queue_empty():
                        await asyncio.gather(*self.tasks.values())
                        if await self._queue_empty():
                            return
            except REDIS_DOWN as exc:
                await self._wait_for_redis(exc)
                continue
            self._redis_back()
            await self._wait_for_work()

    async def _queue_empty(self) -> bool:
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.zcard(self.queue_name)
            pipe.zcard(fair_prefix(self.queue_name) + "waiting")
            queued, waiting = await pipe.execute()
        return not queued and not waiting

    async def _wait_for_work(self) -> None:
        waits = [asyncio.ensure_future(self.presence.wake.wait())]
        if self._full:
            waits.append(asyncio.ensure_future(self._slot_freed.wait()))
        try:
            await asyncio.wait(
                waits, timeout=self.poll_delay_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waits:
                w.cancel()

    async def _poll_iteration(self) -> None:
        # arq's, with the read and the claim of ready jobs as one script (fair dispatch first)
        want = self.max_jobs - self.job_counter
        if self.burst and self.max_burst_jobs >= 0:
            want = min(want, self.max_burst_jobs - self._jobs_started())
        if self.allow_pick_jobs and want > 0:
            lease_ms = int(self.in_progress_timeout_s * 1000)
            polled = await fair.poll(self.pool, self.queue_name, want=want, lease_ms=lease_ms)
            for claimed in polled.claimed:
                self.claimed[claimed.job_id] = claimed
                self._start(claimed.job_id, claimed.score)
            # room was short: a job of ours ending is the next chance to take more
            self._full = len(polled.claimed) >= want or polled.blocked > 0
        else:
            self._full = True
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[job_id]
                t.result()
        await self.heart_beat()

    def _start(self, job_id: str, score: int) -> None:
        # the script claimed no more than the free slots (arq's semaphore is not used: its
        # start_jobs, which took it, is replaced by the script)
        self.job_counter += 1
        task = self.loop.create_task(self.run_job(job_id, score))
        task.add_done_callback(self._job_done)
        self.tasks[job_id] = task

    def _job_done(self, _: asyncio.Task[None]) -> None:
        self.job_counter -= 1
        self._slot_freed.set()

    async def _connect(self) -> ArqRedis:
        assert self.redis_settings is not None
        while True:
            pool = open_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
            try:
                await pool.ping()
            except REDIS_DOWN as exc:
                await pool.aclose(close_connection_pool=True)
                await self._wait_for_redis(exc)
                continue
            self._redis_back()
            return pool

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await execute.run_job(self, job_id, score)
        except REDIS_DOWN as exc:
            # not raised on into the poll loop: by the time it looks, Redis may be back (the
            # loop finds out for itself and logs the outage once)
            if job_id in self._recorded:
                log.warning(
                    "job %s ended and that is recorded, but its after-end hook could not "
                    "reach Redis (%s: %s)",
                    job_id,
                    type(exc).__name__,
                    exc,
                )
            else:
                log.warning(
                    "job %s: Redis unreachable (%s: %s) before the job could start or its end "
                    "be recorded; it runs again when its claim expires (%.0f s after it was "
                    "claimed)",
                    job_id,
                    type(exc).__name__,
                    exc,
                    self.in_progress_timeout_s,
                )
        finally:
            self._recorded.discard(job_id)

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        events, slot = self.end_events.pop(job_id, ([], None))
        write = functools.partial(
            execute.write_end,
            self.pool,
            self.queue_name,
            job_id,
            finish,
            result_data,
            result_timeout_s,
            keep_result_forever,
            incr_score,
            keep_in_progress,
            events=events,
            slot=slot,
        )
        await self._record_end(job_id, write)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        await self._record_end(
            job_id, functools.partial(super().finish_failed_job, job_id, result_data)
        )
        # arq fails a job this way before our wrapper runs it (out of tries after workers
        # died running it, aborted before it started, its data expired): say so, or its
        # record would stay queued or running
        if result_data is not None:
            with contextlib.suppress(Exception):
                event = early_failure_event(self, job_id, result_data)
                await emit_event(self.pool, event)

    async def _record_end(self, job_id: str, write: Callable[[], Awaitable[None]]) -> None:
        """Write a job's end (result, off the queue); while Redis is unreachable, again with
        the reconnect backoff until it answers or the worker closes (then the job's claim
        expires and it runs again)."""
        task = asyncio.current_task()
        if task is not None:
            self._recording.add(task)
        try:
            while True:
                try:
                    await write()
                except REDIS_DOWN as exc:
                    if self._closing:
                        raise
                    await self._wait_for_redis(exc)
                    continue
                self._recorded.add(job_id)
                return
        finally:
            if task is not None:
                self._recording.discard(task)

    async def _wait_for_redis(self, exc: BaseException) -> None:
        now = time.monotonic()
        service = self.ctx.get("service") or self.queue_name
        if self._down_since is None:
            self._down_since = self._down_reported = now
            log.warning(
                "%s worker: Redis unreachable (%s: %s); reconnecting every %.0f s at most",
                service,
                type(exc).__name__,
                exc,
                RECONNECT_MAX_S,
            )
        elif now - self._down_reported >= DOWN_REPORT_EVERY_S:
            self._down_reported = now
            log.warning(
                "%s worker: Redis still unreachable after %.0f s (%s)",
                service,
                now - self._down_since,
                type(exc).__name__,
            )
        back = self._back
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._reconnect_s):
                await back.wait()
        self._reconnect_s = min(self._reconnect_s * 2, RECONNECT_MAX_S)

    def _redis_back(self) -> None:
        if self._down_since is not None:
            log.info(
                "%s worker: Redis reachable again after %.1f s",
                self.ctx.get("service") or self.queue_name,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
            self._reconnect_s = RECONNECT_MIN_S
            self._back.set()
            self._back = asyncio.Event()
            self.presence.redis_back()
            if self.pool is not None:
                # lifecycle events that could not be sent meanwhile (libs.queue.emit_event)
                task = asyncio.get_running_loop().create_task(resend_unsent_events(self.pool))
                self._resend_tasks.add(task)
                task.add_done_callback(self._resend_tasks.discard)

    async def close(self) -> None:
        # arq's close, not stopped by a Redis that is gone: on_shutdown still runs
        self._closing = True
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        # ends still waiting for Redis are given up: those jobs run again when their claims
        # expire
        for task in list(self._recording):
            task.cancel()
        await asyncio.gather(*self._recording, return_exceptions=True)
        await self.presence.stop()
        try:
            await asyncio.wait_for(self.pool.delete(self.health_check_key), 2)
        except REDIS_DOWN:
            log.warning("could not clear the worker's health key (Redis unreachable)")
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None
