"""The worker's command line: run, ``--check``, ``--burst``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence

from arq.constants import health_check_key_suffix

from libs.logging import configure_logging
from libs.queue import queue_name
from libs.settings import ServiceSettings
from libs.telemetry import setup_tracing, start_metrics_server
from libs.worker.connections import REDIS_DOWN, open_pool, worker_redis_settings
from libs.worker.options import _service_settings, settings_for
from libs.worker.runner import Worker

log = logging.getLogger("aistack.worker")


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
