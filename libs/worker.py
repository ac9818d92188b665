"""Worker process for one service: ``python -m libs.worker <service> [--check]``.

Imports ``services.<service>.tasks`` by name (libs never imports a service statically) and runs
an arq worker on ``aistack:queue:<service>`` with that module's:

- ``functions``: job functions (usually made with :func:`libs.queue.job`); may be empty or
  missing, the worker then runs idle (it always registers ``aistack_ping``);
- ``cron_jobs``: optional arq cron jobs;
- ``on_startup(ctx)`` / ``on_shutdown(ctx)``: optional hooks, run after / before the standard
  resources: ``ctx["service"]``, ``ctx["settings"]``, ``ctx["redis"]`` (arq's pool) and, when
  the service has a database, ``ctx["engine"]`` / ``ctx["session_factory"]``;
- ``worker_options``: optional dict of arq ``Worker`` overrides.

Redis unreachable (at start or later) does not end the worker: it logs once, retries with
capped backoff (:data:`RECONNECT_MAX_S`) and picks up where it left off when Redis answers; a
job whose end could not be recorded runs again (at-least-once).

SIGTERM/SIGINT stop picking new jobs and give running ones ``job_completion_wait`` seconds
(``WORKER_SHUTDOWN_GRACE_S``, default 25) before cancelling them; a cancelled job is re-run
later (at-least-once). Liveness: arq writes ``<queue>:health-check`` every 30 s, and
``python -m libs.worker <service> --check`` exits 0 when that key is fresh. Metrics: set
``WORKER_METRICS_PORT`` to serve Prometheus ``/metrics`` from the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool, log_redis_info
from arq.utils import poll
from arq.worker import Function, async_check_health
from arq.worker import Worker as ArqWorker
from redis.exceptions import RedisError

from libs.db import make_engine, make_session_factory
from libs.logging import configure_logging
from libs.queue import RESULT_RETENTION_S, after_job_end, queue_name
from libs.settings import ServiceSettings
from libs.telemetry import setup_tracing

log = logging.getLogger("aistack.worker")

Hook = Callable[[dict[str, Any]], Awaitable[Any]]

# what an unreachable Redis raises (refused, reset, timed out); redis' ConnectionError and
# TimeoutError are RedisErrors
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0
# while Redis stays away, a reminder in the log this often
DOWN_REPORT_EVERY_S = 30.0


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
        once = dataclasses.replace(self.redis_settings, conn_retries=0)
        while True:
            try:
                pool = await create_pool(
                    once,
                    job_deserializer=self.job_deserializer,
                    job_serializer=self.job_serializer,
                    default_queue_name=self.queue_name,
                    expires_extra_ms=self.expires_extra_ms,
                )
            except REDIS_DOWN as exc:
                await self._wait_for_redis(exc)
                continue
            self._redis_back()
            return pool

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
        await asyncio.sleep(self._reconnect_s)
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

    async def close(self) -> None:
        # arq's close, not stopped by a Redis that is gone: on_shutdown still runs
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
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
    """
    names = {getattr(f, "name", getattr(f, "__name__", None)) for f in functions}
    funcs = list(functions) if PING.name in names else [*functions, PING]
    engine_holder: list[Any] = []

    async def startup(c: dict[str, Any]) -> None:
        c["service"] = service
        if settings is not None:
            c.setdefault("settings", settings)
        if database_url and "session_factory" not in c:
            engine = make_engine(database_url, pool_size=5, application_name=f"{service}-worker")
            engine_holder.append(engine)
            c["engine"] = engine
            c["session_factory"] = make_session_factory(engine)
        if on_startup:
            await on_startup(c)
        log.info("%s worker started on %s", service, queue_name(service))

    async def shutdown(c: dict[str, Any]) -> None:
        try:
            if on_shutdown:
                await on_shutdown(c)
        finally:
            for engine in engine_holder:
                await engine.dispose()
        log.info("%s worker stopped", service)

    if redis_settings is None and redis_pool is None:
        redis_settings = RedisSettings.from_dsn(redis_url or ServiceSettings().redis_url)
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
        import asyncio

        rs = RedisSettings.from_dsn(settings.redis_url)
        return asyncio.run(async_check_health(rs, None, queue_name(service)))
    setup_tracing(f"{service}-worker", settings.otlp_endpoint)
    port = int(os.environ.get("WORKER_METRICS_PORT", "0") or 0)
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=settings.host)
    grace = int(os.environ.get("WORKER_SHUTDOWN_GRACE_S", "25"))
    opts = settings_for(service, job_completion_wait=grace, burst=args.burst)
    Worker(**opts).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
