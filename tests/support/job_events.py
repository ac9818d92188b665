"""Job lifecycle events as producers emit them, for the jobs service's consumer tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.queue import JobEvent
from libs.usage import BILLING_SERVICE, RECORD_USAGE

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def usage_job(job_id: str, start_ms: float) -> list[JobEvent]:
    """What an LLM call's usage record emits: queued (API), running and succeeded (worker)."""
    base: dict[str, Any] = {
        "job_id": job_id,
        "service": BILLING_SERVICE,
        "function": RECORD_USAGE,
        "org_id": str(uuid.uuid4()),
        "internal": True,
        "request_id": f"req-{job_id}",
    }
    return [
        JobEvent(**base, status="queued", progress=0, args=[{"tokens": 15}], ts=at(start_ms)),
        JobEvent(**base, status="running", progress=0, ts=at(start_ms + 2)),
        JobEvent(**base, status="succeeded", progress=100, ts=at(start_ms + 5)),
    ]
