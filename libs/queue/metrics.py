"""Metrics of the queue runtime every worker exports (beside libs.telemetry's
``aistack_jobs_total{status}``, whose statuses include ``retried`` and ``dead``, and
``aistack_job_duration_seconds``)."""

from __future__ import annotations

from libs.telemetry import Counter

JOBS_STARTED = Counter(
    "aistack_jobs_started_total",
    "Job attempts started by a worker",
    ["service", "function"],
)
