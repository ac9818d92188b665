"""The worker's command line: run, ``--check``, ``--burst``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence

import uvloop
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
    parser.add_argument(
        "services",
        nargs="+",
        metavar="service",
        help="service(s) whose tasks to run (auth, llm, rag, jobs, ...); several run in one "
        "process, each on its own queue (make run does that with all of them)",
    )
    parser.add_argument("--check", action="store_true", help="health check: exit 0 if alive")
    parser.add_argument("--burst", action="store_true", help="run queued jobs, then exit")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="the process's metrics listener (default: the first service's worker port)",
    )
    args = parser.parse_args(argv)
    services: list[str] = list(dict.fromkeys(args.services))
    first = _service_settings(services[0])
    name = f"{services[0]}-worker" if len(services) == 1 else "worker"
    configure_logging(name, first.log_level, first.log_json)
    if args.check:
        return max(
            asyncio.run(_check_health(service, _service_settings(service))) for service in services
        )
    setup_tracing(name, first.otlp_endpoint)
    # uvloop, as the apps run under uvicorn: a batch's thousands of requests cost the worker
    # about a third less CPU (docs/benchmarks.md, "Batches")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    grace = int(os.environ.get("WORKER_SHUTDOWN_GRACE_S", "25"))
    port = (
        args.metrics_port
        if args.metrics_port is not None
        else first.metrics_listen_port(worker=True)
    )
    if len(services) == 1:
        opts = settings_for(services[0], job_completion_wait=grace, burst=args.burst)
        worker = Worker(**opts)  # from here SIGTERM stops it gracefully (arq's handlers)
        metrics = start_metrics_server(first.host, port) if port else None
        try:
            worker.run()
        finally:
            if metrics is not None:
                metrics.stop()
        return 0
    return asyncio.run(_run_many(services, grace, args.burst, first.host, port))


async def _run_many(
    services: list[str], grace: int, burst: bool, host: str, port: int | None
) -> int:
    """Several services' workers in this one process and event loop (each its own queue,
    settings, resources and hooks): what ``make run`` runs, about 80 MiB per worker process
    less than one process each. SIGTERM/SIGINT stop them all as one worker stops."""
    loop = asyncio.get_running_loop()
    workers = [
        Worker(
            **settings_for(service, job_completion_wait=grace, burst=burst, handle_signals=False)
        )
        for service in services
    ]

    def stop(sig: signal.Signals) -> None:
        log.info("%s received: stopping the workers of %s", sig.name, ", ".join(services))
        for w in workers:
            w.handle_sig_wait_for_completion(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    metrics = start_metrics_server(host, port) if port else None
    try:
        for w in workers:
            w.main_task = loop.create_task(w.main())
        await asyncio.gather(*(w.main_task for w in workers if w.main_task), return_exceptions=True)
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                await w.close()
        if metrics is not None:
            metrics.stop()
    return 0
