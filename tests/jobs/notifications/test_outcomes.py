"""Which ended jobs tell their owner, and with which kind."""

from __future__ import annotations

import uuid

from libs.queue import JobEvent
from services.jobs.notifications.outcomes import outcome_event

ORG, USER = str(uuid.uuid4()), str(uuid.uuid4())


def ended(function: str, status: str, **kw: object) -> JobEvent:
    fields = {"org_id": ORG, "user_id": USER, **kw}
    return JobEvent(job_id="j1", service="jobs", function=function, status=status, **fields)  # type: ignore[arg-type]


def test_a_users_job_tells_its_end_once_per_end() -> None:
    ok = outcome_event(ended("sleep", "succeeded"))
    dead = outcome_event(ended("sleep", "dead", error="boom"))
    assert ok is not None and ok.kind == "job.succeeded" and str(ok.user_id) == USER
    assert dead is not None and dead.kind == "job.failed" and dead.data["error"] == "boom"
    again = outcome_event(ended("sleep", "succeeded"))
    assert again is not None and again.id == ok.id  # read twice: one event


def test_internal_jobs_running_ones_and_batches_tell_nobody_here() -> None:
    assert outcome_event(ended("sleep", "running")) is None
    assert outcome_event(ended("sleep", "succeeded", internal=True)) is None
    assert outcome_event(ended("sleep", "succeeded", user_id=None)) is None
    # a batch's end is told by batch.completed / batch.failed, with its counts
    assert outcome_event(ended("run_batch", "succeeded")) is None
