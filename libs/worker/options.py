"""A service's worker settings: its functions, hooks and resources, with the platform's
defaults (:func:`worker_settings`, :func:`settings_for`)."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.worker import Function

from libs.db import Database
from libs.queue import RESULT_RETENTION_S, after_job_end, queue_name
from libs.queue.types import Periodic, entry_point_functions
from libs.settings import ServiceSettings
from libs.worker.connections import (
    DEFAULT_REDIS_TIMEOUT_S,
    WorkerRedisSettings,
    worker_redis_settings,
)
from libs.worker.runner import DEFAULT_LEASE_S, LEASE_CTX, SCHEDULES_CTX, SERVICE_CTX

log = logging.getLogger("aistack.worker")

Hook = Callable[[dict[str, Any]], Awaitable[Any]]


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
    schedules: Sequence[Periodic] = (),
    lease_s: float | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker`` with the platform's defaults for ``service``.

    Results are kept :data:`libs.queue.RESULT_RETENTION_S` so a duplicate job id stays a no-op
    for that long after the job finished; abort is enabled for the jobs service's cancel.
    ``redis_timeout_s`` (default: ``settings.worker_redis_timeout_s``, else
    :data:`DEFAULT_REDIS_TIMEOUT_S`) is the longest wait for a Redis answer (:class:`Worker`).
    Job functions that packages add to ``service`` through entry points
    (:func:`libs.queue.types.entry_point_functions`) join ``functions`` (a name already there
    wins). ``schedules``: the periodic jobs the service declares in code; ``lease_s``: how long
    a claim on a running job lasts unless renewed (``WORKER_JOB_LEASE_S``); both travel in
    ``ctx`` for :class:`libs.worker.runner.Worker`.
    """
    funcs = list(functions)
    names = {getattr(f, "name", getattr(f, "__name__", None)) for f in funcs}
    for extra in entry_point_functions(service):
        if getattr(extra, "name", None) not in names:
            funcs.append(extra)
            names.add(getattr(extra, "name", None))
    if PING.name not in names:
        funcs.append(PING)
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
    if lease_s is None:
        lease_s = settings.worker_job_lease_s if settings is not None else DEFAULT_LEASE_S
    ctx = ctx if ctx is not None else {}
    ctx.setdefault(SERVICE_CTX, service)
    ctx.setdefault(SCHEDULES_CTX, list(schedules))
    ctx.setdefault(LEASE_CTX, lease_s)
    opts: dict[str, Any] = {
        "functions": funcs,
        "cron_jobs": list(cron_jobs or []) or None,
        "queue_name": queue_name(service),
        "redis_settings": redis_settings,
        "redis_pool": redis_pool,
        "ctx": ctx,
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
        schedules=list(getattr(tasks, "schedules", []) or []),
        **options,
    )
