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
from arq.utils import poll
from arq.worker import Worker as ArqWorker

from libs.queue import resend_unsent_events
from libs.worker.connections import (
    DOWN_REPORT_EVERY_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    REDIS_DOWN,
    open_pool,
)

log = logging.getLogger("aistack.worker")


class Worker(ArqWorker):
    """arq's worker that waits for Redis instead of exiting when it is unreachable.

    arq gives up after ``conn_retries`` (5 x 1 s) at start and on the first failed command
    later, so a Redis outage longer than a few seconds took every worker down (and, under
    ``make run``, the whole stack once the supervisor stopped restarting them).
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
        async for _ in poll(self.poll_delay_s):
            try:
                await self._poll_iteration()
                if self.burst:
                    if 0 <= self.max_burst_jobs <= self._jobs_started():
                        await asyncio.gather(*self.tasks.values())
                        return
                    if await self.pool.zcard(self.queue_name) == 0:
                        await asyncio.gather(*self.tasks.values())
                        return
            except REDIS_DOWN as exc:
                await self._wait_for_redis(exc)
                continue
            self._redis_back()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        try:
            await super().start_jobs(job_ids)
        except REDIS_DOWN:
            # arq (0.28) counted the job it was claiming (job_counter, semaphore) before its
            # Redis calls and gives neither back when they fail: without this, each outage
            # hitting a claim would take one of max_jobs slots for good
            self.job_counter -= 1
            self.sem.release()
            raise

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
            await super().run_job(job_id, score)
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

    async def finish_job(self, job_id: str, *args: Any) -> None:
        await self._record_end(job_id, functools.partial(super().finish_job, job_id, *args))

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        await self._record_end(
            job_id, functools.partial(super().finish_failed_job, job_id, result_data)
        )

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
        try:
            await asyncio.wait_for(self.pool.delete(self.health_check_key), 2)
        except REDIS_DOWN:
            log.warning("could not clear the worker's health key (Redis unreachable)")
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None
