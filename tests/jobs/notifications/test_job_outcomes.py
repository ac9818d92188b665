"""A user's job that ended notifies its owner: in-app (on the live stream's list) and by mail
(a real SMTP server), through the same path as every producer (libs/notify -> the
deliver_notification job -> the fan-out)."""

from __future__ import annotations

import pickle
import uuid
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.notify import Event, event_id_for, job_id_for
from libs.queue import JobEvent, emit_event
from services.jobs.email.service import send_one
from services.jobs.notifications.models import NotificationMail
from services.jobs.notifications.outcomes import JobOutcomes
from services.jobs.settings import JobsSettings
from tests.jobs.notifications.conftest import Inbox, Stack
from tests.support.stacks.auth import signup


async def queued_event(redis: Redis, event_id: uuid.UUID) -> Event:
    raw = await redis.get(f"arq:job:{job_id_for(event_id)}")
    assert raw is not None, "no delivery job queued"
    return Event.model_validate(pickle.loads(raw)["k"]["event"])


async def test_a_failed_job_notifies_its_owner_in_app_and_by_mail(
    stack: Stack,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
    smtp: tuple[Inbox, JobsSettings],
) -> None:
    inbox, settings = smtp
    alice = await signup(stack.auth)
    outcomes = JobOutcomes(redis, f"test-{uuid.uuid4().hex[:6]}")
    await outcomes.ensure_group()
    job_id = f"job-{uuid.uuid4().hex}"
    common: dict[str, Any] = {
        "service": "jobs",
        "function": "sleep",
        "org_id": str(alice.org_id),
        "user_id": str(alice.user_id),
    }
    await emit_event(redis, JobEvent(job_id=job_id, status="running", **common))
    await emit_event(redis, JobEvent(job_id=job_id, status="failed", error="boom", **common))
    internal = f"job-{uuid.uuid4().hex}"
    await emit_event(redis, JobEvent(job_id=internal, status="failed", internal=True, **common))
    while await outcomes.run_once(">"):
        pass

    ev = await queued_event(redis, event_id_for("job.failed", f"{job_id}:failed"))
    assert not await redis.exists(
        f"arq:job:{job_id_for(event_id_for('job.failed', f'{internal}:failed'))}"
    )
    assert (ev.kind, ev.user_id, ev.data["error"]) == ("job.failed", alice.user_id, "boom")
    assert await stack.fanout.deliver(ev) == 1

    listed = (await stack.jobs.get("/v1/notifications", headers=alice.headers)).json()["data"]
    assert [(n["kind"], n["subject"]["job_id"]) for n in listed] == [("job.failed", job_id)]
    async with sessions() as s:
        mail = (
            await s.scalars(select(NotificationMail).where(NotificationMail.event_id == ev.id))
        ).one()
    assert await send_one(sessions, settings, mail.id) == "sent"
    (msg,) = inbox.messages
    assert msg["To"] == alice.email and "failed" in str(msg["Subject"])
