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

from libs.worker.cli import _check_health, main
from libs.worker.connections import (
    DEFAULT_REDIS_TIMEOUT_S,
    DOWN_REPORT_EVERY_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    REDIS_DOWN,
    WorkerRedisSettings,
    open_pool,
    worker_redis_settings,
)
from libs.worker.options import PING, settings_for, worker_settings
from libs.worker.runner import Worker

__all__ = [
    "DEFAULT_REDIS_TIMEOUT_S",
    "DOWN_REPORT_EVERY_S",
    "PING",
    "RECONNECT_MAX_S",
    "RECONNECT_MIN_S",
    "REDIS_DOWN",
    "Worker",
    "WorkerRedisSettings",
    "_check_health",
    "main",
    "open_pool",
    "settings_for",
    "worker_redis_settings",
    "worker_settings",
]
