"""Worker process for one service: ``python -m libs.worker <service> [--check]``.

Imports ``services.<service>.tasks`` by name (libs never imports a service statically) and runs
an arq worker on ``aistack:queue:<service>`` with that module's:

- ``functions``: job functions (usually made with :func:`libs.queue.job`); may be empty or
  missing, the worker then runs idle (it always registers ``aistack_ping``);
- ``cron_jobs``: optional arq cron jobs;
- ``on_startup(ctx)`` / ``on_shutdown(ctx)``: optional hooks, run after / before the standard
  resources: ``ctx["service"]``, ``ctx["settings"]``, ``ctx["redis"]`` (arq's pool) and, when
  the service has a database, ``ctx["db"]`` (:class:`libs.db.Database`);
- ``worker_options``: optional dict of arq ``Worker`` overrides.

Redis unreachable (at start or later) does not end the worker: it logs once, retries with
capped backoff (:data:`RECONNECT_MAX_S`) and picks up where it left off when Redis answers,
with one more line saying so.

A *hung* Redis (stopped, or a network that drops packets: connections open, nothing answers)
is made into an unreachable one: every read on the worker's connections has a deadline,
``WORKER_REDIS_TIMEOUT_S`` (:data:`DEFAULT_REDIS_TIMEOUT_S`, 5 s; arq itself sets only a
connect timeout, so a worker used to wait forever on a connection whose answer never came).
A command that waits in Redis by design (``XREADGROUP ... BLOCK``, ``BLPOP`` and the like) gets
its own wait on top of the deadline, so the deadline needs to be longer only than the slowest
answer of a busy but healthy Redis, not than the longest blocking read (the jobs worker's event
consumer blocks 5 s); a pub/sub listener on the pool polls with ``get_message(timeout=...)``.
A deadline missed closes that connection; the next command opens another.

What happens to jobs while Redis hangs or is down:

- a job already running keeps running. Its own Redis calls fail after the deadline:
  lifecycle events are kept and sent once Redis answers (:func:`libs.queue.emit_event`),
  ``progress()`` goes on without its cancellation check (none can be asked meanwhile), and a
  job's own commands raise: a job that lets that error out fails as any job raising does
  (arq does not retry it; the jobs service's retry can);
- its end (result, removal from the queue) is recorded when Redis answers again: the worker
  retries it with the same backoff, so a job that finished during the outage is not run again.
  Writing the end twice is harmless (a stopped Redis may also run the first, timed-out try
  when it resumes), except that an arq ``Retry(defer=...)`` may be deferred twice as long;
- a job whose start could not be read (the outage began between claiming it and loading it)
  or whose end could not be recorded before the worker stopped runs again once its claim
  expires: ``job_timeout`` + 10 s after it was claimed (610 s by default; arq counts its
  tries against ``max_tries``, 5). So does a job whose claim Redis took but whose answer was
  lost (a command Redis received before it stopped still runs when it resumes);
- if the outage outlasts the claim (over ``job_timeout`` + 10 s), another worker may start the
  job again before this one records its end: it runs twice (at-least-once, as for any worker
  that dies; jobs are idempotent, :mod:`libs.queue`).

SIGTERM/SIGINT stop picking new jobs and give running ones ``job_completion_wait`` seconds
(``WORKER_SHUTDOWN_GRACE_S``, default 25) before cancelling them; a cancelled job is re-run
later (at-least-once). Liveness: arq writes ``<queue>:health-check`` every 30 s, and
``python -m libs.worker <service> --check`` exits 0 when that key is fresh. Metrics: the
worker serves its Prometheus metrics (jobs run, their durations, ...) on a listener of its
own, ``<PREFIX>_WORKER_METRICS_PORT`` or ``WORKER_METRICS_PORT`` (default: the service's port
+ 1010, e.g. 9012 for llm's; 0: none), bound to the service's host setting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings, log_redis_info
from arq.constants import health_check_key_suffix
from arq.utils import poll
from arq.worker import Function
from arq.worker import Worker as ArqWorker
from redis.exceptions import RedisError

from libs.db import Database
from libs.logging import configure_logging
from libs.queue import RESULT_RETENTION_S, after_job_end, queue_name, resend_unsent_events
from libs.redis import CancelSafeSend, mixed_in
from libs.settings import WORKER_REDIS_TIMEOUT_S, ServiceSettings
from libs.telemetry import setup_tracing, start_metrics_server

log = logging.getLogger("aistack.worker")

Hook = Callable[[dict[str, Any]], Awaitable[Any]]

# what an unreachable Redis raises (refused, reset, timed out); redis' ConnectionError and
# TimeoutError are RedisErrors
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0
# while Redis stays away, a reminder in the log this often
DOWN_REPORT_EVERY_S = 30.0
# longest wait for an answer from Redis (WORKER_REDIS_TIMEOUT_S); see the module docstring
DEFAULT_REDIS_TIMEOUT_S = WORKER_REDIS_TIMEOUT_S


@dataclasses.dataclass
class WorkerRedisSettings(RedisSettings):
    """arq's Redis settings plus the read deadline of :class:`Worker`'s connections (arq's own
    ``Worker`` and ``create_pool`` ignore it)."""

    read_timeout_s: float = DEFAULT_REDIS_TIMEOUT_S


def worker_redis_settings(
    url: str, read_timeout_s: float = DEFAULT_REDIS_TIMEOUT_S
) -> WorkerRedisSettings:
    base = RedisSettings.from_dsn(url)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return WorkerRedisSettings(**fields, read_timeout_s=read_timeout_s)


# commands that wait in Redis by design, by where their wait is written (seconds; 0: forever)
_WAIT_IN_LAST_ARG = frozenset({"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BZPOPMIN", "BZPOPMAX"})
_WAIT_IN_FIRST_ARG = frozenset({"BLMPOP", "BZMPOP"})


def _word(arg: Any) -> str:
    return arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)


def _waits_in_redis(args: Sequence[Any]) -> float | None:
    """How long a command may wait in Redis by design, in seconds (``inf``: until something
    arrives); None for a command that answers at once."""
    if not args:
        return None
    name = _word(args[0]).upper()
    try:
        if name in ("XREAD", "XREADGROUP"):
            wait = None
            for i in range(1, len(args) - 1):
                word = _word(args[i]).upper()
                if word == "STREAMS":
                    break
                if word == "BLOCK":
                    wait = float(args[i + 1]) / 1000
                    break
            if wait is None:
                return None
        elif name in _WAIT_IN_LAST_ARG:
            wait = float(args[-1])
        elif name in _WAIT_IN_FIRST_ARG:
            wait = float(args[1])
        else:
            return None
    except (ValueError, TypeError, IndexError):
        return None  # Redis refuses it at once
    return math.inf if wait <= 0 else wait


class _WaitAware(CancelSafeSend):
    """Mixed into the pool's connection class: a command that waits in Redis by design gets
    that wait on top of the socket timeout (redis-py applies the socket timeout alone, so a
    ``BLOCK`` longer than it raised TimeoutError on a healthy Redis). Sends keep a
    cancellation (:class:`libs.redis.CancelSafeSend`): without that, a worker's poll loop
    could swallow the cancel meant to stop it and run on."""

    _waits_s: float | None = None

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._waits_s = None  # pipelines send here directly: their reads take the plain timeout
        await super().send_packed_command(command, check_health)

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        await super().send_command(*args, **kwargs)
        self._waits_s = _waits_in_redis(args)

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's signature
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        waits, self._waits_s = self._waits_s, None
        deadline = self.socket_timeout
        if waits is not None and timeout is None and deadline is not None:
            self.socket_timeout = None if math.isinf(waits) else deadline + waits
        try:
            return await super().read_response(
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        finally:
            self.socket_timeout = deadline


def open_pool(
    settings: RedisSettings,
    *,
    job_serializer: Any = None,
    job_deserializer: Any = None,
    default_queue_name: str | None = None,
    expires_extra_ms: int | None = None,
) -> ArqRedis:
    """arq's pool as :func:`arq.connections.create_pool` makes it (without its connection
    retries and PING: it connects on first use), whose reads have a deadline:
    ``settings.read_timeout_s`` (:class:`WorkerRedisSettings`), blocking reads get their wait
    on top."""
    if settings.sentinel or not isinstance(settings.host, str):
        raise ValueError("libs.worker does not support Redis Sentinel settings")
    extra: dict[str, Any] = {}
    if default_queue_name is not None:
        extra["default_queue_name"] = default_queue_name
    if expires_extra_ms is not None:
        extra["expires_extra_ms"] = expires_extra_ms
    pool = ArqRedis(
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        **extra,
        host=settings.host,
        port=settings.port,
        unix_socket_path=settings.unix_socket_path,
        socket_connect_timeout=settings.conn_timeout,
        socket_timeout=getattr(settings, "read_timeout_s", DEFAULT_REDIS_TIMEOUT_S),
        ssl=settings.ssl,
        ssl_keyfile=settings.ssl_keyfile,
        ssl_certfile=settings.ssl_certfile,
        ssl_cert_reqs=settings.ssl_cert_reqs,
        ssl_ca_certs=settings.ssl_ca_certs,
        ssl_ca_data=settings.ssl_ca_data,
        ssl_check_hostname=settings.ssl_check_hostname,
        retry=settings.retry,
        retry_on_timeout=settings.retry_on_timeout,
        retry_on_error=settings.retry_on_error,
        max_connections=settings.max_connections,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        encoding="utf8",
    )
    connections = pool.connection_pool
    connections.connection_class = mixed_in(_WaitAware, connections.connection_class)
    return pool


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


async def _ping(ctx: dict[str, Any], **_meta: Any) -> str:
    return "pong"


PING = Function(
    name="aistack_ping",
    coroutine=_ping,
    timeout_s=10,
    keep_result_s=60,
    keep_result_forever=None,
    max_tries=1,
)


def worker_settings(
    service: str,
    functions: Sequence[Any],
    *,
    cron_jobs: Sequence[Any] | None = None,
    redis_url: str | None = None,
    redis_settings: RedisSettings | None = None,
    redis_pool: ArqRedis | None = None,
    redis_timeout_s: float | None = None,
    database_url: str | None = None,
    settings: ServiceSettings | None = None,
    ctx: dict[str, Any] | None = None,
    on_startup: Hook | None = None,
    on_shutdown: Hook | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker`` with the platform's defaults for ``service``.

    Results are kept :data:`libs.queue.RESULT_RETENTION_S` so a duplicate job id stays a no-op
    for that long after the job finished; abort is enabled for the jobs service's cancel.
    ``redis_timeout_s`` (default: ``settings.worker_redis_timeout_s``, else
    :data:`DEFAULT_REDIS_TIMEOUT_S`) is the longest wait for a Redis answer (:class:`Worker`).
    """
    names = {getattr(f, "name", getattr(f, "__name__", None)) for f in functions}
    funcs = list(functions) if PING.name in names else [*functions, PING]
    databases: list[Database] = []

    async def startup(c: dict[str, Any]) -> None:
        c["service"] = service
        if settings is not None:
            c.setdefault("settings", settings)
        if database_url and "db" not in c:
            deadlines = (  # DB_COMMAND_TIMEOUT_SECONDS, DB_POOL_TIMEOUT_SECONDS (libs/db.py)
                {}
                if settings is None
                else {
                    "command_timeout_s": settings.db_command_timeout_seconds,
                    "pool_timeout_s": settings.db_pool_timeout_seconds,
                    "guard_retry_s": settings.db_guard_retry_seconds,
                }
            )
            db = Database(
                database_url, pool_size=5, application_name=f"{service}-worker", **deadlines
            )
            databases.append(db)
            c["db"] = db
        if on_startup:
            await on_startup(c)
        log.info("%s worker started on %s", service, queue_name(service))

    async def shutdown(c: dict[str, Any]) -> None:
        try:
            if on_shutdown:
                await on_shutdown(c)
        finally:
            for db in databases:
                await db.aclose()
        log.info("%s worker stopped", service)

    if redis_timeout_s is None:
        redis_timeout_s = (
            settings.worker_redis_timeout_s if settings is not None else DEFAULT_REDIS_TIMEOUT_S
        )
    if redis_settings is None and redis_pool is None:
        url = redis_url or (settings or ServiceSettings()).redis_url
        redis_settings = worker_redis_settings(url, redis_timeout_s)
    elif redis_settings is not None and not isinstance(redis_settings, WorkerRedisSettings):
        fields = {
            f.name: getattr(redis_settings, f.name) for f in dataclasses.fields(redis_settings)
        }
        redis_settings = WorkerRedisSettings(**fields, read_timeout_s=redis_timeout_s)
    opts: dict[str, Any] = {
        "functions": funcs,
        "cron_jobs": list(cron_jobs or []) or None,
        "queue_name": queue_name(service),
        "redis_settings": redis_settings,
        "redis_pool": redis_pool,
        "ctx": ctx if ctx is not None else {},
        "on_startup": startup,
        "on_shutdown": shutdown,
        "after_job_end": after_job_end,
        "allow_abort_jobs": True,
        "keep_result": RESULT_RETENTION_S,
        "health_check_interval": 30,
        "max_tries": 5,
        "job_timeout": 600,
    }
    opts.update(overrides)
    return opts


def _service_settings(service: str) -> ServiceSettings:
    """The service's own settings class when it has one (prefixed env vars), else the base."""
    try:
        module = importlib.import_module(f"services.{service}.settings")
        getter = getattr(module, "get_settings", None)
        if callable(getter):
            s = getter()
            if isinstance(s, ServiceSettings):
                return s
    except ImportError:
        pass
    return ServiceSettings()


def settings_for(service: str, **overrides: Any) -> dict[str, Any]:
    """Worker settings for ``service`` built from its ``services.<service>.tasks`` module."""
    tasks = importlib.import_module(f"services.{service}.tasks")
    settings = _service_settings(service)
    options = dict(getattr(tasks, "worker_options", {}) or {})
    options.update(overrides)
    return worker_settings(
        service,
        list(getattr(tasks, "functions", []) or []),
        cron_jobs=getattr(tasks, "cron_jobs", None),
        redis_url=settings.redis_url,
        database_url=settings.database_url if getattr(tasks, "uses_database", True) else None,
        settings=settings,
        on_startup=getattr(tasks, "on_startup", None),
        on_shutdown=getattr(tasks, "on_shutdown", None),
        **options,
    )


async def _check_health(service: str, settings: ServiceSettings) -> int:
    """0 when the worker's health key (arq writes it every 30 s) is fresh; 1 otherwise, also
    when Redis is down or does not answer within the worker's deadline (arq's check waited
    forever on a hung Redis)."""
    key = queue_name(service) + health_check_key_suffix
    redis = open_pool(worker_redis_settings(settings.redis_url, settings.worker_redis_timeout_s))
    try:
        data = await redis.get(key)
    except REDIS_DOWN as exc:
        log.warning("health check failed: Redis unreachable (%s: %s)", type(exc).__name__, exc)
        return 1
    finally:
        await redis.aclose(close_connection_pool=True)
    if not data:
        log.warning("health check failed: no fresh %s (the worker is not polling)", key)
        return 1
    log.info("health check successful: %s", data.decode(errors="replace"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m libs.worker")
    parser.add_argument("service", help="service whose tasks to run (auth, llm, rag, jobs, ...)")
    parser.add_argument("--check", action="store_true", help="health check: exit 0 if alive")
    parser.add_argument("--burst", action="store_true", help="run queued jobs, then exit")
    args = parser.parse_args(argv)
    service = args.service
    settings = _service_settings(service)
    configure_logging(f"{service}-worker", settings.log_level, settings.log_json)
    if args.check:
        return asyncio.run(_check_health(service, settings))
    setup_tracing(f"{service}-worker", settings.otlp_endpoint)
    grace = int(os.environ.get("WORKER_SHUTDOWN_GRACE_S", "25"))
    opts = settings_for(service, job_completion_wait=grace, burst=args.burst)
    worker = Worker(**opts)  # from here SIGTERM stops it gracefully (arq's handlers)
    port = settings.metrics_listen_port(worker=True)
    metrics = start_metrics_server(settings.host, port) if port is not None else None
    try:
        worker.run()
    finally:
        if metrics is not None:
            metrics.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
