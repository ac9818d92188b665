"""The queues' gauges, set by the jobs worker's queue monitor (every worker counts its own
jobs: ``aistack_jobs_started_total``, ``aistack_jobs_total{status}``,
``aistack_job_duration_seconds``)."""

from __future__ import annotations

from libs.telemetry import Gauge

QUEUE_JOBS = Gauge(
    "aistack_queue_jobs",
    "Jobs on a queue by state: ready (to start now), deferred (a retry's backoff, a deferred "
    "job), fair (waiting their organization's turn), running",
    ["queue", "state"],
)
QUEUE_OLDEST = Gauge(
    "aistack_queue_oldest_waiting_seconds",
    "How long the oldest job ready or waiting its turn on a queue has waited",
    ["queue"],
)
QUEUE_WORKERS = Gauge("aistack_queue_workers", "Live workers of a queue", ["queue"])
QUEUE_CAPACITY = Gauge(
    "aistack_queue_worker_slots", "Jobs a queue's live workers can run at once", ["queue"]
)
RECORDER_LAG = Gauge(
    "aistack_job_events_lag_seconds",
    "How far the jobs service's events recorder is behind the newest job event",
)
RECORDER_PENDING = Gauge(
    "aistack_job_events_pending",
    "Job events the recorder read but has not applied yet (a crashed or stuck recorder's stay)",
)
